package proxy

import "context"

// MaintainOnce runs one cache maintenance pass, for tests that count what
// it costs.
func (s *Server) MaintainOnce(ctx context.Context) { s.maintainOnce(ctx) }

// FlushReport writes the pending report counts to the store.
func (s *Server) FlushReport(ctx context.Context) error { return s.reports.flush(ctx) }
