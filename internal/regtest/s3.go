package regtest

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
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
