package main

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// Size is a number of bytes, written as a plain number or with a unit:
// 500MB, 10GiB, 1.5 KiB (KB, MB, GB, TB are powers of 1000; KiB, MiB, GiB,
// TiB of 1024). It reads itself from the YAML file (encoding.TextUnmarshaler),
// the environment and flags (flag.Value), and writes itself back in its
// shortest exact form, so that --check-config prints 8GiB, not 8589934592.
type Size int64

// sizeUnits are the units a size may be written in, largest first.
var sizeUnits = []struct {
	suffix string
	factor int64
}{
	{"TiB", 1 << 40}, {"TB", 1e12}, {"GiB", 1 << 30}, {"GB", 1e9},
	{"MiB", 1 << 20}, {"MB", 1e6}, {"KiB", 1 << 10}, {"KB", 1e3}, {"B", 1},
}

// ParseSize reads a size such as 500MB or 10GiB.
func ParseSize(s string) (Size, error) {
	num, factor := strings.TrimSpace(s), int64(1)
	for _, u := range sizeUnits {
		if strings.HasSuffix(num, u.suffix) {
			num, factor = strings.TrimSpace(strings.TrimSuffix(num, u.suffix)), u.factor
			break
		}
	}
	n, err := strconv.ParseFloat(num, 64)
	if err != nil || n < 0 || math.IsInf(n, 0) || math.IsNaN(n) || n*float64(factor) >= math.MaxInt64 {
		return 0, fmt.Errorf("%q is not a size such as 500MB or 10GiB", strings.TrimSpace(s))
	}
	return Size(n * float64(factor)), nil
}

// String is the size in the largest unit that states it exactly: 8GiB,
// 500MB, or a plain number of bytes.
func (s Size) String() string {
	if s == 0 {
		return "0"
	}
	for _, u := range sizeUnits[:len(sizeUnits)-1] { // not "B": a plain number says it
		if int64(s)%u.factor == 0 {
			return strconv.FormatInt(int64(s)/u.factor, 10) + u.suffix
		}
	}
	return strconv.FormatInt(int64(s), 10)
}

// Set is flag.Value's: it reads v as ParseSize does.
func (s *Size) Set(v string) error {
	parsed, err := ParseSize(v)
	if err != nil {
		return err
	}
	*s = parsed
	return nil
}

// UnmarshalText reads a size from the YAML file; an empty value is 0,
// which each field's validation judges.
func (s *Size) UnmarshalText(text []byte) error {
	if strings.TrimSpace(string(text)) == "" {
		*s = 0
		return nil
	}
	return s.Set(string(text))
}

// MarshalText writes the size as String does.
func (s Size) MarshalText() ([]byte, error) { return []byte(s.String()), nil }
