package proxy

import (
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"

	"github.com/distribution/reference"
	"github.com/gorilla/mux"
	digest "github.com/opencontainers/go-digest"

	"github.com/regnorm/regnorm/proxy/errcode"
	"github.com/regnorm/regnorm/proxy/mirror"
	"github.com/regnorm/regnorm/proxy/upstream"
)

// The OCI distribution spec's grammar for repository names on the wire: no
// domain, lower case, no empty components. reference.NameRegexp also admits a
// domain (with upper case), which never appears in a request path.
const namePattern = `[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*`

// digestPattern is the spec's loose digest grammar: routes accept it, and
// digest.Parse then tells a malformed digest (400 DIGEST_INVALID) from a
// well-formed one.
const digestPattern = `[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+`

var (
	referencePattern = reference.TagRegexp.String() + `|` + digestPattern
	anchoredTag      = regexp.MustCompile(`^` + reference.TagRegexp.String() + `$`)
	anchoredName     = regexp.MustCompile(`^` + namePattern + `$`)
)

// Route names, used as the metrics' route label.
const (
	routeBase      = "base"
	routeManifest  = "manifest"
	routeBlob      = "blob"
	routeTags      = "tags"
	routeReferrers = "referrers"
	routeUpload    = "upload"
	routeHealth    = "health"
	routeMetrics   = "metrics"
	routeReport    = "report"
	routeWarm      = "warm"
	routeNodes     = "nodes"
	routeStatus    = "status"
	routeNotFound  = "not_found"
	routeTooLarge  = "headers_too_large"
	routeForbidden = "method_not_allowed"
)

// distRequest is a distribution API request, parsed and validated before any
// I/O happens.
type distRequest struct {
	repo   *mirror.Repository // the repository, read as the client
	tag    string             // set for a manifest by tag
	digest digest.Digest      // set for a manifest by digest, and for blobs
}

// ref is the reference as it appears in the path.
func (d distRequest) ref() string {
	if d.tag != "" {
		return d.tag
	}
	return d.digest.String()
}

func (s *Server) parse(r *http.Request) (distRequest, error) {
	vars := mux.Vars(r)
	repo := vars["name"]
	if len(repo) > reference.NameTotalLengthMax {
		return distRequest{}, errcode.New(http.StatusBadRequest, errcode.NameInvalid, fmt.Sprintf("repository name longer than %d characters", reference.NameTotalLengthMax), nil)
	}
	mirrored, err := s.repositoryFor(r, r.URL.Query().Get("ns"), repo)
	if err != nil {
		return distRequest{}, err
	}
	req := distRequest{repo: mirrored}
	ref := vars["reference"]
	if ref == "" {
		ref = vars["digest"]
	}
	switch {
	case ref == "":
	case anchoredTag.MatchString(ref) && vars["digest"] == "":
		req.tag = ref
	default:
		dgst, err := digest.Parse(ref)
		if err != nil {
			return distRequest{}, errcode.New(http.StatusBadRequest, errcode.DigestInvalid, "invalid digest "+ref, err)
		}
		req.digest = dgst
	}
	return req, nil
}

// repositoryFor is the repository service's name on the upstream ns names,
// read as the client of r (see upstream.Registry.As): how a request, warm,
// or a test reaches a repository.
func (s *Server) repositoryFor(r *http.Request, ns, name string) (*mirror.Repository, error) {
	up, err := s.upstreamFor(ns)
	if err != nil {
		return nil, err
	}
	if up, err = up.As(r); err != nil {
		return nil, err
	}
	return s.mirror.Repository(up.Repository(name)), nil
}

// upstreamFor picks the upstream named by ns. Only configured upstreams are
// ever contacted: an unknown ns is refused, never dialled.
func (s *Server) upstreamFor(ns string) (*upstream.Registry, error) {
	if ns == "" {
		ns = s.defaultUpstream
	}
	if up, ok := s.upstreams[ns]; ok {
		return up, nil
	}
	return nil, errcode.New(http.StatusNotFound, errcode.NameUnknown, fmt.Sprintf("upstream registry %q is not configured on this mirror", ns), nil)
}

func (s *Server) routes(metricsHandler http.Handler) http.Handler {
	r := mux.NewRouter()
	// Match on the escaped path, so %2F never turns into a separator, and do
	// not clean paths, so a//b is refused rather than redirected.
	r.UseEncodedPath()
	r.SkipClean(true)

	read := []string{http.MethodGet, http.MethodHead}
	name := "/v2/{name:" + namePattern + "}"

	// With client auth on, the registry API and warm always need it; the
	// report and metrics as configured; health checks never do.
	api, report, metrics := true, true, true
	if a := s.clientAuth; a != nil {
		report, metrics = a.ProtectReport, a.ProtectMetrics
	}
	r.Handle("/v2/", s.handle(routeBase, s.protect(api, s.serveBase))).Methods(read...)
	r.Handle(name+"/manifests/{reference:"+referencePattern+"}", s.handle(routeManifest, s.protect(api, s.serveManifest))).Methods(read...)
	r.Handle(name+"/blobs/{digest:"+digestPattern+"}", s.handle(routeBlob, s.protect(api, s.serveBlob))).Methods(read...)
	r.Handle(name+"/tags/list", s.handle(routeTags, s.protect(api, s.serveTags))).Methods(read...)
	r.Handle(name+"/referrers/{digest:"+digestPattern+"}", s.handle(routeReferrers, s.protect(api, s.serveReferrers))).Methods(read...)
	r.Handle(name+"/blobs/uploads/{rest:.*}", s.handle(routeUpload, s.readOnly))
	r.Handle("/api/v1/rewrites", s.handle(routeReport, s.protect(report, s.status.ServeReport))).Methods(read...)
	r.Handle("/api/v1/readiness", s.handle(routeReport, s.protect(report, s.readiness.ServeReadiness))).Methods(read...)
	r.Handle("/status", s.handle(routeStatus, s.protect(report, s.status.Serve))).Methods(read...)
	r.Handle("/", http.RedirectHandler("/status", http.StatusFound)).Methods(read...)
	r.Handle("/api/v1/warm", s.handle(routeWarm, s.protect(api, s.warm.Serve))).Methods(http.MethodPost)
	r.Handle("/api/v1/warm", s.handle(routeWarm, s.warmNeedsPost)).Methods(read...)
	r.Handle("/api/v1/nodes", s.handle(routeNodes, s.protect(report, s.status.ServeNodes))).Methods(read...)
	// Node reports need a token of their own, which only node-config has.
	r.Handle("/api/v1/nodes", s.handle(routeNodes, s.reportersOnly(s.receiveNodeReport))).Methods(http.MethodPost)
	r.Handle("/healthz", s.handle(routeHealth, s.serveHealthz)).Methods(read...)
	r.Handle("/readyz", s.handle(routeHealth, s.serveReadyz)).Methods(read...)
	if metricsHandler != nil {
		r.Handle("/metrics", s.handle(routeMetrics, s.protect(metrics, func(w http.ResponseWriter, r *http.Request) error {
			metricsHandler.ServeHTTP(w, r)
			return nil
		}))).Methods(read...)
	}
	r.MethodNotAllowedHandler = s.handle(routeForbidden, s.readOnly)
	r.NotFoundHandler = s.handle(routeNotFound, s.serveNotFound)
	return browserHeaders(s.limitHeaders(r))
}

// apiCSP is the Content-Security-Policy of every answer but the status
// page's (operator.StatusCSP): none of them is a page, so a browser may run, load,
// frame or submit nothing from one.
const apiCSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"

// browserHeaders sets, on every answer (errors and redirects included),
// what keeps a browser from rendering one as a page on regnorm's origin,
// which holds /status, the fleet view, warm, and any Basic credentials a
// browser keeps for regnorm: no sniffing of a type the answer does not
// declare, and apiCSP. The status page replaces the CSP with its own.
func browserHeaders(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Content-Security-Policy", apiCSP)
		next.ServeHTTP(w, r)
	})
}

func (s *Server) readOnly(w http.ResponseWriter, r *http.Request) error {
	w.Header().Set("Allow", "GET, HEAD")
	return errcode.New(http.StatusMethodNotAllowed, errcode.Unsupported, "regnorm is a read-only mirror: "+r.Method+" is not supported", nil)
}

func (s *Server) warmNeedsPost(w http.ResponseWriter, r *http.Request) error {
	w.Header().Set("Allow", "POST")
	return errcode.New(http.StatusMethodNotAllowed, errcode.Unsupported, `use POST with a body {"images": ["docker.io/library/redis:2.8.23", ...]}`, nil)
}

// serveNotFound answers what no route matched, saying what was wrong: a
// repository name or reference that breaks the OCI grammar (400, with the
// reason), or an endpoint regnorm does not serve (404 UNSUPPORTED).
func (s *Server) serveNotFound(w http.ResponseWriter, r *http.Request) error {
	p := r.URL.EscapedPath()
	rest, ok := strings.CutPrefix(p, "/v2/")
	if !ok {
		return errcode.New(http.StatusNotFound, errcode.Unsupported, "no such endpoint", nil)
	}
	if rest == "_catalog" {
		return errcode.New(http.StatusNotFound, errcode.Unsupported, "the catalog is not served: a mirror knows only the repositories it is asked for", nil)
	}
	for _, kind := range []string{"/manifests/", "/blobs/uploads/", "/blobs/", "/tags/", "/referrers/"} {
		i := strings.LastIndex(rest, kind)
		if i < 0 {
			continue
		}
		name, ref := rest[:i], rest[i+len(kind):]
		if why := nameProblem(name); why != "" {
			return errcode.New(http.StatusBadRequest, errcode.NameInvalid, why, nil)
		}
		switch kind {
		case "/manifests/":
			if strings.Contains(ref, ":") {
				return errcode.New(http.StatusBadRequest, errcode.DigestInvalid, fmt.Sprintf("%q is not a digest such as sha256:<64 hex digits>", ref), nil)
			}
			return errcode.New(http.StatusBadRequest, errcode.TagInvalid, fmt.Sprintf("%q is not a tag: up to 128 letters, digits, '_', '.' and '-', not starting with '.' or '-'", ref), nil)
		case "/blobs/", "/referrers/":
			return errcode.New(http.StatusBadRequest, errcode.DigestInvalid, fmt.Sprintf("%q is not a digest such as sha256:<64 hex digits>", ref), nil)
		}
		break
	}
	return errcode.New(http.StatusNotFound, errcode.Unsupported, "no such endpoint", nil)
}

// nameProblem says what is wrong with a repository name on the wire, or ""
// if nothing is.
func nameProblem(name string) string {
	switch {
	case name == "":
		return "the repository name is empty"
	case strings.Contains(name, "%"):
		return fmt.Sprintf("repository name %q is percent-encoded: send it as it is, with '/' between its components", name)
	case strings.Contains(name, "//") || strings.HasPrefix(name, "/") || strings.HasSuffix(name, "/"):
		return fmt.Sprintf("repository name %q has an empty component", name)
	case strings.ToLower(name) != name:
		return fmt.Sprintf("repository names are lower case: %q", name)
	case len(name) > reference.NameTotalLengthMax:
		return fmt.Sprintf("repository name longer than %d characters", reference.NameTotalLengthMax)
	case !anchoredName.MatchString(name):
		return fmt.Sprintf("repository name %q: each component is lower-case letters and digits, joined by '.', '_', '__' or '-'", name)
	}
	return ""
}

// nextTagsLink is the Link to the page of repo's tags that starts where
// from says, with n tags (n < 0: as many as the upstream gives) and ns, so
// that it goes to the same upstream.
func nextTagsLink(repo string, from upstream.Cursor, n int, ns string) string {
	q := url.Values{}
	q.Set(from.Name, from.Value)
	if n >= 0 {
		q.Set("n", strconv.Itoa(n))
	}
	if ns != "" {
		q.Set("ns", ns)
	}
	return "</v2/" + repo + "/tags/list?" + q.Encode() + `>; rel="next"`
}

// maxHeaderBytes bounds a request's headers. net/http's own limit, which
// cmd/proxy sets a little above it (MaxHeaderBytes, 64 KiB), answers in
// plain text; below it, the answer is an OCI error.
const maxHeaderBytes = 60 << 10

// limitHeaders refuses requests whose headers exceed maxHeaderBytes, with
// an OCI error.
func (s *Server) limitHeaders(next http.Handler) http.Handler {
	tooLarge := s.handle(routeTooLarge, func(w http.ResponseWriter, r *http.Request) error {
		return errcode.New(http.StatusRequestHeaderFieldsTooLarge, errcode.Unsupported, fmt.Sprintf("request headers larger than %d KiB", maxHeaderBytes>>10), nil)
	})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		size := len(r.Method) + len(r.RequestURI) + len(r.Proto) + len(r.Host)
		for k, vs := range r.Header {
			for _, v := range vs {
				size += len(k) + len(v) + 4
			}
		}
		if size > maxHeaderBytes {
			tooLarge.ServeHTTP(w, r)
			return
		}
		next.ServeHTTP(w, r)
	})
}
