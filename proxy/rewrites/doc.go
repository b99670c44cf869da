// Package rewrites keeps the rewrite report: for each original, the
// variants regnorm served of it, to which clients, under which tags, and
// the pulls by an original digest that regnorm could not fix. Serving
// counts accumulate in memory and are merged into the cache's entries on
// every flush, so a request never waits for storage; the report's size is
// bounded however many images are pulled. It speaks no HTTP: the server
// records what it served, and the operator's pages list the report.
package rewrites
