package regtest

import (
	"fmt"

	tomlv1 "github.com/pelletier/go-toml"
	tomlv2 "github.com/pelletier/go-toml/v2"
)

// ContainerdTOML reads b as containerd reads its configuration files and
// hosts.toml: with go-toml v1 as 1.x does and with go-toml v2 as 2.x does,
// both TOML 1.0 readers. They refuse what BurntSushi/toml (which follows
// TOML 1.1) takes, such as a "\x01" escape, and refuse control characters
// in comments (containerd 2.3.4: "toml: invalid character in comment").
// It returns the document as go-toml v2 reads it.
func ContainerdTOML(b []byte) (map[string]any, error) {
	if _, err := tomlv1.LoadBytes(b); err != nil {
		return nil, fmt.Errorf("containerd 1.x's reader: %w", err)
	}
	var doc map[string]any
	if err := tomlv2.Unmarshal(b, &doc); err != nil {
		return nil, fmt.Errorf("containerd 2.x's reader: %w", err)
	}
	return doc, nil
}
