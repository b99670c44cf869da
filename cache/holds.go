package cache

import (
	"context"
	"errors"
	"fmt"
	"path"
	"time"
)

// maxHoldRecord bounds what is read of a hold record: a time in JSON is a
// few dozen bytes.
const maxHoldRecord = 256

type holdRecord struct {
	Until time.Time `json:"until"`
}

func holdPath(upstream string) string { return path.Join("/holds", escapeSegment(upstream)) }

// GetHold is the time until which upstream is held after a rate limit (see
// upstream.HoldStore), as a replica wrote it; the zero time when none is
// recorded. upstream is the upstream's name, or, for one that forwards
// credentials, its name and a client's identity. The reader bounds it
// again: a record is only a hint.
func (s *Store) GetHold(ctx context.Context, upstream string) (time.Time, error) {
	var rec holdRecord
	switch err := s.getJSONWithin(ctx, holdPath(upstream), &rec, maxHoldRecord); {
	case errors.Is(err, ErrNotFound):
		return time.Time{}, nil
	case err != nil:
		return time.Time{}, fmt.Errorf("get hold %s: %w", upstream, err)
	}
	return rec.Until, nil
}

// PutHold records that upstream is held until until, for every replica.
func (s *Store) PutHold(ctx context.Context, upstream string, until time.Time) error {
	if err := s.putJSON(ctx, holdPath(upstream), holdRecord{Until: until.UTC()}); err != nil {
		return fmt.Errorf("put hold %s: %w", upstream, err)
	}
	return nil
}
