package cache_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"testing"

	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	s3 "github.com/distribution/distribution/v3/registry/storage/driver/s3-aws"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/internal/regtest"
)

// s3Server is a real S3-compatible server for the S3 runs of the store
// suite: versitygw, from REGNORM_VERSITYGW_BIN (scripts/test-deps.sh).
var s3Server *regtest.S3Server

func TestMain(m *testing.M) {
	if bin := os.Getenv("REGNORM_VERSITYGW_BIN"); bin != "" {
		dir, err := os.MkdirTemp("", "regnorm-s3")
		if err != nil {
			panic(err)
		}
		if s3Server, err = regtest.StartS3(bin, dir); err != nil {
			fmt.Fprintln(os.Stderr, "cache tests:", err)
			os.Exit(2)
		}
		drivers["s3"] = newS3Driver
		code := m.Run()
		s3Server.Close()
		os.RemoveAll(dir)
		os.Exit(code)
	}
	if os.Getenv("REGNORM_REQUIRE_ALL") != "" {
		fmt.Fprintln(os.Stderr, "cache tests: REGNORM_VERSITYGW_BIN is not set; scripts/test.sh sets it")
		os.Exit(2)
	}
	fmt.Fprintln(os.Stderr, "cache tests: no S3 server (REGNORM_VERSITYGW_BIN unset): running inmemory and filesystem only")
	os.Exit(m.Run())
}

// newS3Driver returns an s3-aws driver on its own key prefix of the bucket.
func newS3Driver(t *testing.T) storagedriver.StorageDriver {
	d, _ := newS3Store(t)
	return d
}

// newS3Store returns an s3-aws driver on its own key prefix of the bucket,
// and the multipart-upload cleaner for the same prefix.
func newS3Store(t *testing.T) (storagedriver.StorageDriver, *cache.S3Uploads) {
	var b [8]byte
	rand.Read(b[:])
	root := "/t-" + hex.EncodeToString(b[:])
	d, err := s3.FromParameters(context.Background(), map[string]any{
		"bucket": s3Server.Bucket, "region": s3Server.Region, "regionendpoint": s3Server.Endpoint,
		"forcepathstyle": true, "secure": false, "accesskey": s3Server.AccessKey, "secretkey": s3Server.SecretKey,
		"rootdirectory": root,
	})
	if err != nil {
		t.Fatal(err)
	}
	u, err := cache.NewS3Uploads(cache.S3Params{Bucket: s3Server.Bucket, Region: s3Server.Region, Endpoint: s3Server.Endpoint,
		ForcePathStyle: true, AccessKey: s3Server.AccessKey, SecretKey: s3Server.SecretKey, RootDirectory: root})
	if err != nil {
		t.Fatal(err)
	}
	return d, u
}
