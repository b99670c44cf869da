// Type-checks regnorm-dashboard.json against Grafana's published dashboard
// schema (@grafana/schema). The JSON is embedded as a TypeScript object
// literal, so literal types and excess (unknown) properties are checked, not
// just the shape that a JSON import would widen to.
//
//   node check.mjs <dashboard.json> <node_modules dir>
import { readFileSync, writeFileSync, mkdtempSync, symlinkSync, rmSync } from "node:fs";
import { join } from "node:path";
import { tmpdir } from "node:os";
import { execFileSync } from "node:child_process";

const [dashboardPath, modules] = process.argv.slice(2);
const dashboard = readFileSync(dashboardPath, "utf8");
JSON.parse(dashboard); // a clear error first if it is not JSON at all
const dir = mkdtempSync(join(tmpdir(), "regnorm-dashboard-"));
symlinkSync(modules, join(dir, "node_modules"));
writeFileSync(join(dir, "dashboard.ts"),
  `import type { Dashboard } from "@grafana/schema";\nexport const dashboard: Dashboard = ${dashboard};\n`);
try {
  execFileSync(join(modules, ".bin", "tsc"),
    ["--noEmit", "--strict", "--skipLibCheck", "--moduleResolution", "bundler", "--module", "esnext", "--target", "es2022", join(dir, "dashboard.ts")],
    { stdio: "inherit" });
} catch {
  rmSync(dir, { recursive: true, force: true });
  process.exit(1);
}
rmSync(dir, { recursive: true, force: true });
console.log("dashboard matches @grafana/schema");
