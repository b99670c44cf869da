package regtest

import "sync"

type countMap struct {
	mu sync.Mutex
	m  map[string]int64
}

func (c *countMap) add(k string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = map[string]int64{}
	}
	c.m[k]++
}

func (c *countMap) get(k string) int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.m[k]
}
