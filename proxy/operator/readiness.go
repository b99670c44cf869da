package operator

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	digest "github.com/opencontainers/go-digest"
	"golang.org/x/sync/errgroup"

	"github.com/regnorm/regnorm/internal/containerdcfg"
	"github.com/regnorm/regnorm/internal/recent"
	"github.com/regnorm/regnorm/proxy/errcode"
	"github.com/regnorm/regnorm/proxy/fleet"
	"github.com/regnorm/regnorm/proxy/mirror"
	"github.com/regnorm/regnorm/proxy/ruleset"
)

// PulledImage is an image regnorm answered (rewrites.Original).
type PulledImage struct {
	Upstream, Repository string
	Original             digest.Digest
	Tags                 []string
}

// ImageReadiness is one image of GET /api/v1/readiness.
type ImageReadiness struct {
	Upstream       string   `json:"upstream"`
	Repository     string   `json:"repository"`
	Tags           []string `json:"tags"`
	OriginalDigest string   `json:"originalDigest"`
	// Status is ready, not-ready, unknown or clean (mirror.Ready...).
	Status string `json:"status"`
	// Rules are the rules of the version that may change the image
	// ("none": none may).
	Rules         string `json:"rules"`
	VariantDigest string `json:"variantDigest,omitempty"`
	// Cached is false when the original is no longer in the cache: its
	// status is unknown until it is pulled again.
	Cached bool `json:"cached"`
}

// ReadinessAnswer is the body of GET /api/v1/readiness.
type ReadinessAnswer struct {
	Containerd string `json:"containerd"`
	// Rules are the rules the version gets, within those enabled.
	Rules string `json:"rules"`
	// Counts are the images by status, all pages together.
	Counts map[string]int   `json:"counts"`
	Images []ImageReadiness `json:"images"`
	// Hidden counts the images of upstreams that forward credentials.
	Hidden int `json:"hidden"`
	// Total is how many images match the status filter, Page and Pages
	// how they are paged.
	Total int `json:"total"`
	Page  int `json:"page"`
	Pages int `json:"pages"`
}

// Statuses are the readiness statuses, in the order the page shows them.
var Statuses = []string{mirror.NotReady, mirror.Unknown, mirror.Ready, mirror.Clean}

const (
	// readinessPageSize is how many images a page of /api/v1/readiness
	// lists.
	readinessPageSize = 200
	// readinessChecks is how many images are looked up at once.
	readinessChecks = 16
	// maxReadinessSets is how many rule sets' answers are kept for
	// recent.TTL.
	maxReadinessSets = 16
)

// Readiness is upgrade readiness: for a containerd version, which of the
// images regnorm answered would fail on it without regnorm, and whether
// their variant is ready. Its sources are functions the server hands in.
type Readiness struct {
	// Images lists the images regnorm answered that the report may show,
	// and how many it may not (rewrites.Report.Originals).
	Images func(ctx context.Context) ([]PulledImage, int, error)
	// Check says what rules make of one image, as the cache records it
	// (mirror.Service.Readiness).
	Check func(ctx context.Context, upstream, repo string, dgst digest.Digest, rules ruleset.Set) (mirror.Readiness, error)
	// Cached says whether a variant's manifest is in the cache
	// (mirror.Service.ManifestCached).
	Cached func(ctx context.Context, upstream, repo string, dgst digest.Digest) (bool, error)
	Rules  ruleset.Policy
	Now    func() time.Time

	mu     sync.Mutex
	recent map[ruleset.Set]*recent.Listing[readinessList]
	// settled are the images found ready or clean, by rule set and image:
	// a recorded verdict stays, so only a ready one's variant is looked
	// for again (unknown and not-ready ones are looked up whole, every
	// time).
	settled *lru.Cache[string, mirror.Readiness]
}

// maxSettled bounds the settled images remembered, all rule sets together.
const maxSettled = 1 << 15

type readinessList struct {
	images []ImageReadiness
	hidden int
}

// Forget drops the answers kept: what they say changed (a warm made
// variants). Other replicas' answers follow within recent.TTL.
func (s *Readiness) Forget() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, l := range s.recent {
		l.Forget()
	}
}

// ParseContainerd reads a containerd version as readiness and warm take it:
// 2.1, 2.1.0 or v2.1.0.
func ParseContainerd(s string) (containerdcfg.Version, error) {
	t := strings.TrimPrefix(strings.TrimSpace(s), "v")
	if strings.Count(t, ".") == 1 {
		t += ".0"
	}
	v := containerdcfg.ParseVersion(t)
	if !v.Known || fmt.Sprintf("%d.%d.%d", v.Major, v.Minor, v.Patch) != t {
		return v, errcode.New(http.StatusBadRequest, errcode.Unsupported, fmt.Sprintf("containerd %q is not a version such as 2.1 or 1.6.8", s), nil)
	}
	return v, nil
}

// list is every image's readiness under rules, most recently served first,
// each rule set's computed at most once per recent.TTL.
func (s *Readiness) list(ctx context.Context, rules ruleset.Set) (readinessList, error) {
	s.mu.Lock()
	if s.recent == nil {
		s.recent = map[ruleset.Set]*recent.Listing[readinessList]{}
		s.settled, _ = lru.New[string, mirror.Readiness](maxSettled)
	}
	l, ok := s.recent[rules]
	if !ok {
		l = recent.New[readinessList](s.Now)
		if len(s.recent) < maxReadinessSets {
			s.recent[rules] = l
		}
	}
	s.mu.Unlock()
	return l.Get(func() (readinessList, error) { return s.compute(ctx, rules) })
}

func (s *Readiness) compute(ctx context.Context, rules ruleset.Set) (readinessList, error) {
	images, hidden, err := s.Images(ctx)
	if err != nil {
		return readinessList{}, err
	}
	out := make([]ImageReadiness, len(images))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(readinessChecks)
	for i, img := range images {
		g.Go(func() error {
			key := rules.Key() + " " + img.Upstream + "/" + img.Repository + "@" + img.Original.String()
			res, ok := s.settled.Get(key)
			if ok && res.State == mirror.Ready {
				// Its verdict stays; its variant is looked for again.
				cached, err := s.Cached(gctx, img.Upstream, img.Repository, res.Variant)
				if err != nil {
					return err
				}
				if !cached {
					s.settled.Remove(key)
					res.State = mirror.NotReady
				}
			}
			if !ok {
				var err error
				if res, err = s.Check(gctx, img.Upstream, img.Repository, img.Original, rules); err != nil {
					return err
				}
				if res.State == mirror.Ready || res.State == mirror.Clean {
					s.settled.Add(key, res)
				}
			}
			applies := "none"
			if !res.Rules.Empty() {
				applies = res.Rules.Key()
			}
			out[i] = ImageReadiness{Upstream: img.Upstream, Repository: img.Repository, Tags: img.Tags, OriginalDigest: img.Original.String(),
				Status: res.State, Rules: applies, Cached: res.Cached}
			if res.Variant != "" {
				out[i].VariantDigest = res.Variant.String()
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return readinessList{}, err
	}
	// By name, not by when last served: a list read page by page (warm
	// --not-ready) must not see an image move to a page already read
	// because a node pulled it meanwhile.
	slices.SortFunc(out, func(a, b ImageReadiness) int {
		return strings.Compare(a.Upstream+"/"+a.Repository+"@"+a.OriginalDigest, b.Upstream+"/"+b.Repository+"@"+b.OriginalDigest)
	})
	return readinessList{images: out, hidden: hidden}, nil
}

// ServeReadiness answers GET /api/v1/readiness?containerd=2.1, with
// &status=not-ready,unknown to list only those, &page=N (from 1).
func (s *Readiness) ServeReadiness(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	if q.Get("containerd") == "" {
		return errcode.New(http.StatusBadRequest, errcode.Unsupported, "give the containerd version to check, as ?containerd=2.1", nil)
	}
	v, err := ParseContainerd(q.Get("containerd"))
	if err != nil {
		return err
	}
	var want []string
	if f := q.Get("status"); f != "" {
		for _, st := range strings.Split(f, ",") {
			if !slices.Contains(Statuses, st) {
				return errcode.New(http.StatusBadRequest, errcode.Unsupported, fmt.Sprintf("status %q is none of %s", st, strings.Join(Statuses, ", ")), nil)
			}
			want = append(want, st)
		}
	}
	client := s.Rules.ForVersion(v)
	l, err := s.list(r.Context(), client.Rules)
	if err != nil {
		return errcode.New(http.StatusServiceUnavailable, errcode.Unavailable, "reading what regnorm has served failed", err)
	}
	ans := ReadinessAnswer{Containerd: client.Version, Rules: client.Rules.Key(), Counts: map[string]int{}, Hidden: l.hidden, Images: []ImageReadiness{}}
	var matching []ImageReadiness
	for _, img := range l.images {
		ans.Counts[img.Status]++
		if want == nil || slices.Contains(want, img.Status) {
			matching = append(matching, img)
		}
	}
	for _, st := range Statuses {
		ans.Counts[st] += 0
	}
	ans.Total = len(matching)
	ans.Pages = max(1, (len(matching)+readinessPageSize-1)/readinessPageSize)
	ans.Page, _ = strconv.Atoi(q.Get("page"))
	ans.Page = min(max(ans.Page, 1), ans.Pages)
	start := (ans.Page - 1) * readinessPageSize
	ans.Images = append(ans.Images, matching[start:min(start+readinessPageSize, len(matching))]...)
	w.Header().Set("Content-Type", "application/json")
	return WriteJSON(w, ans)
}

// readinessRow is the status page's readiness of the versions that share a
// rule set.
type readinessRow struct {
	Versions []string
	Query    string // a version of them, for the API's link
	Counts   []statusCount
	Err      string
}

type statusCount struct {
	Status string
	Count  int
}

// rows are the page's readiness rows: for the known minor versions newer
// than the fleet's oldest pulling node (all of them before any node
// pulled), and for the version asked (?containerd=), one row a rule set.
func (s *Readiness) rows(ctx context.Context, nodes []fleet.NodeStatus, asked string) []readinessRow {
	oldest := containerdcfg.Version{}
	for _, n := range nodes {
		v := containerdcfg.ParseVersion(n.ContainerdVersion)
		if !v.Known || n.LastPull.IsZero() {
			continue
		}
		if !oldest.Known || v.Major < oldest.Major || (v.Major == oldest.Major && v.Minor < oldest.Minor) {
			oldest = v
		}
	}
	var versions []string
	for _, m := range ruleset.Minors() {
		v, _ := ParseContainerd(m)
		if !oldest.Known || v.Major > oldest.Major || (v.Major == oldest.Major && v.Minor > oldest.Minor) {
			versions = append(versions, m)
		}
	}
	if asked != "" {
		if _, err := ParseContainerd(asked); err == nil && !slices.Contains(versions, asked) {
			versions = append([]string{asked}, versions...)
		}
	}
	var rows []readinessRow
	var sets []ruleset.Set
	for _, ver := range versions {
		v, _ := ParseContainerd(ver)
		rules := s.Rules.ForVersion(v).Rules
		if i := slices.Index(sets, rules); i >= 0 {
			rows[i].Versions = append(rows[i].Versions, ver)
			continue
		}
		sets = append(sets, rules)
		rows = append(rows, readinessRow{Versions: []string{ver}, Query: ver})
	}
	for i := range rows {
		// Counted only when asked: a count reads each image's records
		// (unknown ones every time), which a page load must not cost.
		if asked == "" || !slices.Contains(rows[i].Versions, asked) {
			continue
		}
		l, err := s.list(ctx, sets[i])
		if err != nil {
			rows[i].Err = errcode.PublicMessage(err)
			continue
		}
		counts := map[string]int{}
		for _, img := range l.images {
			counts[img.Status]++
		}
		for _, st := range Statuses {
			rows[i].Counts = append(rows[i].Counts, statusCount{st, counts[st]})
		}
	}
	return rows
}
