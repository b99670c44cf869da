// Package regtest is test support shared by regnorm's tests: a real
// distribution registry running in-process (optionally behind Docker token
// auth with a token server of its own), and a small client that builds
// images and pushes them to any registry, in-process or a real binary;
// and FollowAdvice, which does what node-config tells an operator to do to
// containerd's configuration, to the letter.
//
// Nothing outside _test.go files and e2e imports it.
package regtest
