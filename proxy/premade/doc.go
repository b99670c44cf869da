// Package premade makes, in the background, the variants of an image that
// the fleet's other containerd versions need, once a node has pulled it by
// tag: the first pull of an old node then finds its variant recorded, as a
// newer node found its own. It is a client of the repository service: the
// work is Repository.Variant, as the client that pulled, so it is admitted
// as that client's pull and, with replicas, made by the variant's owner.
// It is bounded: a queue of fixed capacity (what does not fit is dropped,
// and counted), a fixed number of workers, and one pull's upstream budget
// an image. It speaks no HTTP and does not import proxy.
package premade
