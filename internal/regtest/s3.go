package regtest

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// S3Server is a real S3-compatible server (versitygw with its posix
// backend) on 127.0.0.1, with one bucket.
type S3Server struct {
	Endpoint  string // http://127.0.0.1:port
	Bucket    string
	Region    string
	AccessKey string
	SecretKey string
	cmd       *exec.Cmd
	done      chan struct{}
}

// StartS3 runs the versitygw binary bin with its data under dir. Stop it
// with Close.
func StartS3(bin, dir string) (*S3Server, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	addr := ln.Addr().String()
	ln.Close()
	s := &S3Server{Endpoint: "http://" + addr, Bucket: "regnorm", Region: "us-east-1",
		AccessKey: "regnorm-test", SecretKey: "regnorm-test-secret", done: make(chan struct{})}
	// The posix backend makes every top-level directory a bucket.
	if err := os.MkdirAll(filepath.Join(dir, s.Bucket), 0o755); err != nil {
		return nil, err
	}
	s.cmd = exec.Command(bin, "--access", s.AccessKey, "--secret", s.SecretKey, "--region", s.Region, "--port", addr, "posix", dir)
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := s.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start versitygw: %w", err)
	}
	go func() { s.cmd.Wait(); close(s.done) }()
	for deadline := time.Now().Add(20 * time.Second); ; {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return s, nil
		}
		select {
		case <-s.done:
			return nil, errors.New("versitygw exited at start")
		default:
		}
		if time.Now().After(deadline) {
			s.Close()
			return nil, errors.New("versitygw did not listen")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Close stops the server (this process only, by its PID).
func (s *S3Server) Close() {
	select {
	case <-s.done:
		return
	default:
	}
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(5 * time.Second):
		s.cmd.Process.Kill()
		<-s.done
	}
}

// S3Counter relays to an S3 server and counts the requests by operation,
// so that tests can state what a proxy operation costs on S3.
type S3Counter struct {
	// Endpoint is the counter's URL: point the S3 client here.
	Endpoint string
	counts   countMap
}

// CountS3 starts a counting relay to the S3 server at target until the test
// ends.
func CountS3(t testing.TB, target string) *S3Counter {
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	c := &S3Counter{}
	rp := httputil.NewSingleHostReverseProxy(u)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c.counts.add(s3Operation(r))
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	c.Endpoint = srv.URL
	return c
}

// s3Operation names the S3 API call r makes.
func s3Operation(r *http.Request) string {
	q := r.URL.Query()
	switch {
	case r.Method == http.MethodGet && q.Has("list-type"):
		return "ListObjectsV2"
	case r.Method == http.MethodGet && q.Has("uploads"):
		return "ListMultipartUploads"
	case r.Method == http.MethodPost && q.Has("uploads"):
		return "CreateMultipartUpload"
	case r.Method == http.MethodPut && q.Has("partNumber"):
		return "UploadPart"
	case r.Method == http.MethodPost && q.Has("uploadId"):
		return "CompleteMultipartUpload"
	case r.Method == http.MethodDelete && q.Has("uploadId"):
		return "AbortMultipartUpload"
	case r.Method == http.MethodPut && r.Header.Get("X-Amz-Copy-Source") != "":
		return "CopyObject"
	case r.Method == http.MethodPost && q.Has("delete"):
		return "DeleteObjects"
	case r.Method == http.MethodGet:
		return "GetObject"
	case r.Method == http.MethodHead:
		return "HeadObject"
	case r.Method == http.MethodPut:
		return "PutObject"
	case r.Method == http.MethodDelete:
		return "DeleteObject"
	}
	return r.Method
}

// Since returns the requests counted since mark (from Mark), by operation.
func (c *S3Counter) Since(mark map[string]int64) map[string]int64 {
	now := c.Mark()
	for k, v := range mark {
		if now[k] -= v; now[k] == 0 {
			delete(now, k)
		}
	}
	return now
}

// Mark returns the counts so far.
func (c *S3Counter) Mark() map[string]int64 {
	c.counts.mu.Lock()
	defer c.counts.mu.Unlock()
	out := make(map[string]int64, len(c.counts.m))
	for k, v := range c.counts.m {
		out[k] = v
	}
	return out
}
