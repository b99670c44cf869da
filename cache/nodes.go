package cache

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"path"
	"time"

	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"

	"github.com/regnorm/regnorm/internal/containerdcfg"
)

// NodeReport is what regnorm node-config found on one node: whether its
// containerd reads the hosts.toml that sends it to regnorm, and if not, why
// and what would fix it. Reports are shared by every replica through the
// cache.
//
// Why is said by Reasons, codes of a fixed set with the values they need;
// Reason and Fix are words made from them and the facts by whoever shows a
// report (node-config in its status file, regnorm in its fleet view), never
// sent nor kept: what an operator reads is the words of the one who shows
// it, not of the sender.
type NodeReport struct {
	Node              string `json:"node"`
	Address           string `json:"address"`
	ContainerdVersion string `json:"containerdVersion"`
	HostsDir          string `json:"hostsDir"`
	// ConfigVersion is the configuration version whose plugin names
	// containerd reads (a drop-in's on 1.x may differ from the main file's).
	ConfigVersion   int                    `json:"configVersion"`
	ConfigPath      string                 `json:"configPath"`
	TransferService bool                   `json:"transferService"`
	ReadsHostsToml  bool                   `json:"readsHostsToml"`
	Reasons         []containerdcfg.Reason `json:"reasons,omitempty"`
	Reason          string                 `json:"reason,omitempty"`
	Fix             string                 `json:"fix,omitempty"`
	// DropIn is node-config's own drop-in (containerdcfg.DropInName),
	// where containerd's configuration imports it.
	DropIn     string    `json:"dropIn,omitempty"`
	ReportedAt time.Time `json:"reportedAt"`
}

// NodeStore keeps node-config's reports.
type NodeStore interface {
	PutNodeReport(ctx context.Context, r NodeReport) error
	GetNodeReport(ctx context.Context, node string) (NodeReport, error)
	DeleteNodeReport(ctx context.Context, node string) error
	ListNodeReports(ctx context.Context) ([]NodeReport, error)
}

var _ NodeStore = (*Store)(nil)

func nodePath(node string) string {
	sum := sha256.Sum256([]byte(node))
	h := hex.EncodeToString(sum[:])
	return path.Join("/nodes", h[:2], h)
}

// PutNodeReport records r, replacing the node's last report.
func (s *Store) PutNodeReport(ctx context.Context, r NodeReport) error {
	if r.Node == "" {
		return errors.New("put node report: no node name")
	}
	if err := s.putJSON(ctx, nodePath(r.Node), r); err != nil {
		return fmt.Errorf("put node report %s: %w", r.Node, err)
	}
	return nil
}

// GetNodeReport returns a node's last report, or ErrNotFound.
func (s *Store) GetNodeReport(ctx context.Context, node string) (NodeReport, error) {
	var r NodeReport
	if err := s.getJSON(ctx, nodePath(node), &r); err != nil {
		return NodeReport{}, fmt.Errorf("get node report %s: %w", node, err)
	}
	return r, nil
}

// DeleteNodeReport forgets a node.
func (s *Store) DeleteNodeReport(ctx context.Context, node string) error {
	err := s.driver.Delete(ctx, nodePath(node))
	if err != nil && !errors.As(err, new(storagedriver.PathNotFoundError)) {
		return fmt.Errorf("delete node report %s: %w", node, err)
	}
	return nil
}

// ListNodeReports returns every node report, reading only those written
// since the last listing (as ListReports does).
func (s *Store) ListNodeReports(ctx context.Context) ([]NodeReport, error) {
	out, err := s.nodes.list(ctx, s, "/nodes")
	if err != nil {
		return nil, fmt.Errorf("list node reports: %w", err)
	}
	return out, nil
}
