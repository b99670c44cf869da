package proxy

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/regnorm/regnorm/proxy/label"
	"github.com/regnorm/regnorm/proxy/upstream"
)

// handlerFunc is a handler that returns its error; handle writes it.
type handlerFunc func(w http.ResponseWriter, r *http.Request) error

// handle adapts a handlerFunc: one place maps errors to OCI responses,
// every request gets one access-log line, and a budget of upstream requests
// (upstreamBudget) for everything it causes.
func (s *Server) handle(route string, h handlerFunc) http.Handler {
	return s.accessLog(route, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		err := h(w, r.WithContext(upstream.WithBudget(r.Context(), upstreamBudget)))
		if err == nil {
			return
		}
		rw := w.(*responseWriter)
		if rw.status != 0 {
			// Headers are out; the body is cut short and the client sees the
			// error as a short read.
			logAttrs(r.Context(), slog.String("error", err.Error()))
			return
		}
		e := writeError(w, r, err)
		logAttrs(r.Context(), slog.String("error", e.Error()))
	}))
}

func (s *Server) accessLog(route string, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		bag := &attrBag{}
		r = r.WithContext(context.WithValue(r.Context(), attrBagKey{}, bag))
		rw := &responseWriter{ResponseWriter: w}
		next.ServeHTTP(rw, r)
		status := rw.status
		if status == 0 {
			status = http.StatusOK
		}
		d := time.Since(start)
		// The method and code go through label: a client chooses the
		// method, and no code a handler writes (should one ever relay an
		// upstream's) may add a series.
		s.metrics.requests.WithLabelValues(route, label.Method(r.Method), label.Status(status)).Inc()
		s.metrics.requestDuration.WithLabelValues(route).Observe(d.Seconds())
		level := slog.LevelInfo
		switch {
		case status >= 500 && status != http.StatusServiceUnavailable:
			// An upstream or the cache failed this client. A 503 says to
			// retry shortly (still normalizing, or busy): routine.
			level = slog.LevelWarn
		case route == routeHealth || route == routeMetrics:
			level = slog.LevelDebug
		}
		attrs := append([]slog.Attr{
			slog.String("method", r.Method),
			slog.String("path", r.URL.Path),
			slog.String("route", route),
			slog.Int("status", status),
			slog.Int64("bytes", rw.written),
			slog.Duration("duration", d),
			slog.String("remote", r.RemoteAddr),
			slog.String("user_agent", r.UserAgent()),
		}, bag.get()...)
		s.log.LogAttrs(r.Context(), level, "request", attrs...)
	})
}

type attrBagKey struct{}

// attrBag collects attributes that handlers add to their request's log line.
type attrBag struct {
	mu    sync.Mutex
	attrs []slog.Attr
}

func (b *attrBag) get() []slog.Attr {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.attrs
}

// logAttrs adds attributes to the access-log line of the request in ctx.
func logAttrs(ctx context.Context, attrs ...slog.Attr) {
	if b, ok := ctx.Value(attrBagKey{}).(*attrBag); ok {
		b.mu.Lock()
		b.attrs = append(b.attrs, attrs...)
		b.mu.Unlock()
	}
}

// responseWriter records status and size. It keeps io.ReaderFrom, so a cached
// blob file still goes out with sendfile.
type responseWriter struct {
	http.ResponseWriter
	status  int
	written int64
}

func (w *responseWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *responseWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(p)
	w.written += int64(n)
	return n, err
}

func (w *responseWriter) ReadFrom(src io.Reader) (int64, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	n, err := io.Copy(w.ResponseWriter, src)
	w.written += n
	return n, err
}

func (w *responseWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (w *responseWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
