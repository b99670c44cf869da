// Package operator is the operator's room: the status page, the rewrite
// report's API, what it shows of the fleet, and warm. It is a client of the
// server, never part of its internals: the server hands it functions and
// small interfaces (the rewrite report's entries, the fleet view, the
// cache's usage, the upstreams' health, and for warm the repository service
// as a client may read it), so it needs none of proxy's types. It does not
// import proxy, and it does not route: proxy mounts its handlers.
package operator
