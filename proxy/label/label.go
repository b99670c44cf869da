// Package label keeps the values of metric labels to fixed, small sets.
// Every series a label value creates lives as long as the process and is
// sent on every scrape, so a value that a client or an upstream chooses
// (a request method, a status code) goes through this package on its way
// to a label: what is outside the set is counted as Other, never given a
// series of its own. It imports no regnorm package.
package label

import (
	"net/http"
	"slices"
	"strconv"
)

// Other is the value that stands for every value outside a set.
const Other = "other"

// Set is a fixed set of label values.
type Set struct {
	values []string
}

// NewSet is the set of values (and Other).
func NewSet(values ...string) Set {
	return Set{values: slices.Clone(values)}
}

// Of is v when the set holds it, otherwise Other: a label fed through a
// Set has at most one series per value of the set, plus Other, whatever it
// is given.
func (s Set) Of(v string) string {
	if slices.Contains(s.values, v) {
		return v
	}
	return Other
}

// Values are the set's values and Other, for creating series up front.
func (s Set) Values() []string {
	return append(slices.Clone(s.values), Other)
}

// methods are the request methods of RFC 9110 and PATCH. regnorm answers
// GET, HEAD and POST; the rest get 405, under their own name.
var methods = NewSet(http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch,
	http.MethodDelete, http.MethodOptions, http.MethodConnect, http.MethodTrace)

// Method is the label of a request method: the method for a standard one,
// Other for anything a client made up.
func Method(m string) string { return methods.Of(m) }

// statuses are the codes regnorm answers with and the codes registries,
// their token services and CDNs are known to answer with.
var statuses = NewSet(
	"200", "201", "202", "204", "206",
	"301", "302", "303", "304", "307", "308",
	"400", "401", "403", "404", "405", "406", "408", "409", "410", "412", "413", "415", "416", "429", "431",
	"500", "501", "502", "503", "504")

// classes are the status classes of RFC 9110, for the codes outside
// statuses: "5xx" still matches a query for code=~"5..".
var classes = NewSet("1xx", "2xx", "3xx", "4xx", "5xx")

// Status is the label of an HTTP status code: the code itself when it is
// one of the codes registries answer with, else its class ("4xx"), else
// (a code outside 100-599, which net/http passes on from an upstream)
// Other.
func Status(code int) string {
	if v := statuses.Of(strconv.Itoa(code)); v != Other {
		return v
	}
	if code < 100 || code > 599 {
		return Other
	}
	return classes.Of(strconv.Itoa(code/100) + "xx")
}

// Statuses are the values Status gives.
func Statuses() []string {
	return append(slices.Clip(statuses.values), classes.Values()...)
}
