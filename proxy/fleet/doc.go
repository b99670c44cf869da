// Package fleet knows which nodes pull through regnorm, with which
// containerd, and what node-config found on each node, the nodes that never
// pulled included. It takes node-config's reports (checked: a report is
// codes and bounded data, never words for an operator), notes the pulls the
// server sees, merges both into the fleet view the operator's pages show,
// and counts the nodes for regnorm_nodes. It speaks no HTTP of its own:
// proxy authenticates reporters and translates errors, operator shows the
// view.
package fleet
