#!/usr/bin/env python3
"""Writes the rewrite golden inputs (manifest.json, mediatype, config.json).

The want.json / changes.json goldens are written by `go test ./rewrite -update`.
Run from rewrite/testdata: python3 generate.py
"""
import hashlib, json, os

def sha(b): return "sha256:" + hashlib.sha256(b).hexdigest()

def config(diff_ids):
    return json.dumps({"architecture": "amd64", "os": "linux",
                       "config": {"Cmd": ["/bin/sh"]},
                       "rootfs": {"type": "layers", "diff_ids": diff_ids},
                       "history": [{"created_by": "legacy docker 1.9"}]}, separators=(",", ":")).encode()

layers = [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": 100 + i,
           "digest": sha(b"layer%d" % i)} for i in range(2)]
oci_layers = [dict(l, mediaType="application/vnd.oci.image.layer.v1.tar+gzip") for l in layers]
diff_ids = [sha(b"diff%d" % i) for i in range(2)]

def write(name, mediatype, manifest, cfg):
    os.makedirs("manifest/" + name, exist_ok=True)
    with open("manifest/%s/mediatype" % name, "w") as f: f.write(mediatype + "\n")
    with open("manifest/%s/manifest.json" % name, "wb") as f: f.write(manifest)
    if cfg is not None:
        with open("manifest/%s/config.json" % name, "wb") as f: f.write(cfg)

def manifest(mt, cfg, cfg_mt, lys, indent=3):
    m = {"schemaVersion": 2, "mediaType": mt,
         "config": {"mediaType": cfg_mt, "size": len(cfg), "digest": sha(cfg)}, "layers": lys}
    return json.dumps(m, indent=indent).encode()

DOCKER = "application/vnd.docker.distribution.manifest.v2+json"
OCI = "application/vnd.oci.image.manifest.v1+json"
OCTET = "application/octet-stream"

c = config(diff_ids)
write("docker-octet-stream", DOCKER, manifest(DOCKER, c, OCTET, layers), c)
write("oci-octet-stream", OCI, manifest(OCI, c, OCTET, oci_layers), c)
write("docker-clean", DOCKER, manifest(DOCKER, c, "application/vnd.docker.container.image.v1+json", layers), c)
artifact = b'{"kind":"helm-chart","rootfs":{"type":"not-layers"}}'
write("octet-stream-artifact", OCI, manifest(OCI, artifact, OCTET, oci_layers), artifact)
short = config(diff_ids[:1])
write("octet-stream-diff-ids-mismatch", DOCKER, manifest(DOCKER, short, OCTET, layers), short)
# Unusual but valid formatting, unknown fields and annotations: only the
# config media type may change, every other byte stays.
odd = ('{\n\t"schemaVersion" : 2,\n\t"x-custom": {"nested": [1, 2.50, "\\u00e9"]},\n'
       '\t"config": {"digest": "%s",\t"size": %d, "mediaType": "%s",\n'
       '\t\t"annotations": {"org.opencontainers.image.title": "keep me"}},\n'
       '\t"layers": %s,\n\t"annotations": {"a": "b"}\n}\n') % (sha(c), len(c), OCTET, json.dumps(layers))
write("odd-formatting", DOCKER, odd.encode(), c)

def index(children, mt):
    return json.dumps({"schemaVersion": 2, "mediaType": mt, "manifests": children,
                       "annotations": {"org.example": "index"}}, indent=2).encode()

children = [{"mediaType": DOCKER, "digest": sha(b"child%d" % i), "size": 500 + i,
             "platform": {"architecture": a, "os": "linux"}} for i, a in enumerate(["arm64", "amd64", "s390x"])]
children[1]["annotations"] = {"keep": "this"}
os.makedirs("index", exist_ok=True)
with open("index/list.json", "wb") as f: f.write(index(children, "application/vnd.docker.distribution.manifest.list.v2+json"))

# The index sizes rule: an OCI index (as "docker manifest" before 18.09 wrote
# them) whose entries name real children with wrong sizes. child-*.json are
# the children as fetched; the s390x entry's child is not fetched (not a
# platform regnorm reads), so its size stays, wrong as it is.
fetched = [open("manifest/docker-clean/manifest.json", "rb").read(),
           open("manifest/oci-octet-stream/manifest.json", "rb").read()]
os.makedirs("index/sizes", exist_ok=True)
for i, b in enumerate(fetched):
    with open("index/sizes/child-%d.json" % i, "wb") as f: f.write(b)
sized = [{"mediaType": DOCKER, "digest": sha(fetched[0]), "size": len(fetched[0]) - 100,
          "platform": {"architecture": "amd64", "os": "linux"}},
         {"mediaType": OCI, "digest": sha(fetched[1]), "size": len(fetched[1]),
          "platform": {"architecture": "arm64", "os": "linux"}},
         {"mediaType": DOCKER, "digest": sha(b"child2"), "size": 427,
          "platform": {"architecture": "s390x", "os": "linux"}}]
with open("index/sizes/index.json", "wb") as f: f.write(index(sized, "application/vnd.oci.image.index.v1+json"))

# The layer media type rule: an OCI manifest (buildah 1.8 - 1.9) whose layers
# are all typed as plain tar, compressed with gzip, zstd, and not at all; and
# one typed gzip. compressions.json is what the blobs' first bytes say.
TAR = "application/vnd.oci.image.layer.v1.tar"
typed = [{"mediaType": TAR, "size": 200 + i, "digest": sha(b"typed%d" % i)} for i in range(3)]
typed.append({"mediaType": TAR + "+gzip", "size": 203, "digest": sha(b"typed3")})
os.makedirs("layertype", exist_ok=True)
with open("layertype/manifest.json", "wb") as f:
    f.write(manifest(OCI, config(diff_ids * 2), "application/vnd.oci.image.config.v1+json", typed))
with open("layertype/compressions.json", "w") as f:
    json.dump({typed[0]["digest"]: "gzip", typed[1]["digest"]: "zstd", typed[2]["digest"]: "none",
               typed[3]["digest"]: "gzip"}, f, indent=2)
    f.write("\n")

# The diff IDs rule: a Docker manifest of three gzip layers whose config
# gives the second layer the digest of its compressed blob as diff ID
# (buildpacks lifecycle 0.21.11), and the same whose config lists one diff
# ID for the three (the list short). diffids.json is what the layers' blobs
# decompress to, as the engine computes it.
GZ = "application/vnd.docker.image.rootfs.diff.tar.gzip"
gz = [{"mediaType": GZ, "size": 300 + i, "digest": sha(b"gz%d" % i)} for i in range(3)]
tars = [sha(b"tar%d" % i) for i in range(3)]
for name, ids in [("wrong", [tars[0], gz[1]["digest"], tars[2]]), ("short", tars[:1])]:
    c = config(ids)
    os.makedirs("diffids/" + name, exist_ok=True)
    with open("diffids/%s/config.json" % name, "wb") as f: f.write(c)
    with open("diffids/%s/manifest.json" % name, "wb") as f:
        f.write(manifest(DOCKER, c, "application/vnd.docker.container.image.v1+json", gz))
with open("diffids/diffids.json", "w") as f:
    json.dump({l["digest"]: t for l, t in zip(gz, tars)}, f, indent=2)
    f.write("\n")
