package cache

import (
	"context"
	"crypto/tls"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go/aws"
	"github.com/aws/aws-sdk-go/aws/credentials"
	"github.com/aws/aws-sdk-go/aws/session"
	"github.com/aws/aws-sdk-go/service/s3"
)

// S3Params locate a bucket as distribution's s3-aws driver does, so that
// S3Uploads sees the same keys as the driver.
type S3Params struct {
	Bucket, Region, Endpoint string
	ForcePathStyle           bool
	Secure, SkipVerify       bool
	AccessKey, SecretKey     string
	RootDirectory            string
}

// S3Uploads aborts stale multipart uploads in the cache's bucket: the
// storage driver can neither list nor end them.
type S3Uploads struct {
	client *s3.S3
	bucket string
	root   string
}

var _ MultipartUploads = (*S3Uploads)(nil)

// NewS3Uploads builds an S3 client with the driver's parameters. Build it
// before any request is made (aws-sdk-go v1 sessions race otherwise).
func NewS3Uploads(p S3Params) (*S3Uploads, error) {
	cfg := aws.NewConfig().WithRegion(p.Region).WithS3ForcePathStyle(p.ForcePathStyle).WithDisableSSL(!p.Secure)
	if p.Endpoint != "" {
		cfg = cfg.WithEndpoint(p.Endpoint)
	}
	if p.AccessKey != "" && p.SecretKey != "" {
		cfg = cfg.WithCredentials(credentials.NewStaticCredentials(p.AccessKey, p.SecretKey, ""))
	}
	if p.SkipVerify {
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.TLSClientConfig = &tls.Config{InsecureSkipVerify: true} //nolint:gosec // the operator's explicit choice, for test servers
		cfg = cfg.WithHTTPClient(&http.Client{Transport: t})
	}
	sess, err := session.NewSession(cfg)
	if err != nil {
		return nil, fmt.Errorf("s3 session: %w", err)
	}
	return &S3Uploads{client: s3.New(sess), bucket: p.Bucket, root: strings.Trim(p.RootDirectory, "/")}, nil
}

// key is the object key of a driver path, as the driver forms it.
func (u *S3Uploads) key(p string) string {
	return strings.TrimLeft(u.root+"/"+strings.TrimLeft(p, "/"), "/")
}

// AbortStale aborts the multipart uploads under prefix started before
// olderThan. It costs one LIST request per 1000 uploads in progress, plus one
// request per upload aborted.
func (u *S3Uploads) AbortStale(ctx context.Context, prefix string, olderThan time.Time) (int, error) {
	var stale []*s3.MultipartUpload
	err := u.client.ListMultipartUploadsPagesWithContext(ctx, &s3.ListMultipartUploadsInput{
		Bucket: aws.String(u.bucket),
		Prefix: aws.String(u.key(prefix)),
	}, func(page *s3.ListMultipartUploadsOutput, _ bool) bool {
		for _, up := range page.Uploads {
			if up.Initiated != nil && up.Initiated.Before(olderThan) {
				stale = append(stale, up)
			}
		}
		return true
	})
	if err != nil {
		return 0, fmt.Errorf("list multipart uploads: %w", err)
	}
	aborted := 0
	for _, up := range stale {
		if _, err := u.client.AbortMultipartUploadWithContext(ctx, &s3.AbortMultipartUploadInput{
			Bucket: aws.String(u.bucket), Key: up.Key, UploadId: up.UploadId,
		}); err != nil {
			return aborted, fmt.Errorf("abort multipart upload %s: %w", aws.StringValue(up.Key), err)
		}
		aborted++
	}
	return aborted, nil
}
