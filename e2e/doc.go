// Package e2e holds black-box tests: they build the regnorm binary, start it,
// a real distribution registry binary as the upstream and a real containerd
// daemon, and talk to them over the network as a cluster would.
//
// The tests carry the e2e build tag and need root and the tools that
// scripts/test-deps.sh installs; scripts/test.sh runs them.
package e2e
