package flight

// Waiters is how many callers wait for the work of key.
func Waiters[T any](g *Group[T], key string) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	if c, ok := g.calls[key]; ok {
		return c.waiters
	}
	return 0
}
