package proxy_test

import (
	"fmt"
	"os"
	"testing"

	"github.com/regnorm/regnorm/internal/regtest"
)

// s3Server is a real S3-compatible server (versitygw, from
// REGNORM_VERSITYGW_BIN) for the tests that count S3 requests.
var s3Server *regtest.S3Server

func TestMain(m *testing.M) {
	bin := os.Getenv("REGNORM_VERSITYGW_BIN")
	if bin == "" {
		if os.Getenv("REGNORM_REQUIRE_ALL") != "" {
			fmt.Fprintln(os.Stderr, "proxy tests: REGNORM_VERSITYGW_BIN is not set; scripts/test.sh sets it")
			os.Exit(2)
		}
		fmt.Fprintln(os.Stderr, "proxy tests: no S3 server (REGNORM_VERSITYGW_BIN unset): the S3 cost test is skipped")
		os.Exit(m.Run())
	}
	dir, err := os.MkdirTemp("", "regnorm-s3")
	if err != nil {
		panic(err)
	}
	if s3Server, err = regtest.StartS3(bin, dir); err != nil {
		fmt.Fprintln(os.Stderr, "proxy tests:", err)
		os.Exit(2)
	}
	code := m.Run()
	s3Server.Close()
	os.RemoveAll(dir)
	os.Exit(code)
}
