package main

import (
	"fmt"
	"strconv"
	"strings"
)

// ByteSize is a size in bytes, written as a number or with a unit: 500MB,
// 10GiB (KB, MB, GB, TB are powers of 1000; KiB, MiB, GiB, TiB of 1024).
type ByteSize int64

var byteUnits = []struct {
	suffix string
	factor int64
}{
	{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10},
	{"TB", 1e12}, {"GB", 1e9}, {"MB", 1e6}, {"KB", 1e3}, {"B", 1},
}

func parseByteSize(s string) (ByteSize, error) {
	s = strings.TrimSpace(s)
	factor := int64(1)
	for _, u := range byteUnits {
		if strings.HasSuffix(s, u.suffix) {
			s, factor = strings.TrimSpace(strings.TrimSuffix(s, u.suffix)), u.factor
			break
		}
	}
	n, err := strconv.ParseFloat(s, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("%q is not a size such as 500MB or 10GiB", s)
	}
	return ByteSize(n * float64(factor)), nil
}
