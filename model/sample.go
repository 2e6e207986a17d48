package model

import (
	"container/heap"
	"math"
	"math/rand/v2"
	"sort"
)

// SamplerParams configure a [Sampler]. The chain is libllama's: repetition
// penalty, top-k, top-p, min-p, temperature, then a seeded draw; a
// temperature <= 0 picks the most likely token after the penalty.
type SamplerParams struct {
	Temperature   float32 // <= 0: greedy
	TopK          int     // keep the k most likely tokens (0: all)
	TopP          float32 // keep the smallest set with this probability mass (0 or >= 1: all)
	MinP          float32 // drop tokens below MinP times the top probability (0: none)
	RepeatPenalty float32 // divide positive (multiply negative) logits of recent tokens (0 or 1: off)
	RepeatLastN   int     // recent tokens the penalty looks at (0: 64)
	Seed          uint64  // seed of the draw
}

// Sampler picks tokens from logits. It is not safe for concurrent use.
type Sampler struct {
	p    SamplerParams
	rng  *rand.Rand
	cand []cand
	seen map[int32]bool
}

type cand struct {
	id int32
	l  float32
}

// NewSampler creates a sampler.
func NewSampler(p SamplerParams) *Sampler {
	if p.RepeatLastN == 0 {
		p.RepeatLastN = 64
	}
	return &Sampler{p: p, rng: rand.New(rand.NewPCG(p.Seed, 0x73616d70)), seen: map[int32]bool{}}
}

// Sample returns the next token given the logits of the last position and
// the tokens so far (for the repetition penalty). logits is modified by the
// penalty.
func (s *Sampler) Sample(logits []float32, history []int32) int32 {
	if pen := s.p.RepeatPenalty; pen > 0 && pen != 1 {
		clear(s.seen)
		for _, id := range history[max(0, len(history)-s.p.RepeatLastN):] {
			if id < 0 || int(id) >= len(logits) || s.seen[id] {
				continue
			}
			s.seen[id] = true
			if logits[id] <= 0 {
				logits[id] *= pen
			} else {
				logits[id] /= pen
			}
		}
	}
	if s.p.Temperature <= 0 {
		return argmax(logits)
	}
	c := s.topK(logits)
	sort.Slice(c, func(i, j int) bool { return c[i].l > c[j].l })
	if p := s.p.TopP; p > 0 && p < 1 {
		probs := softmax(c, 1)
		cum := 0.0
		keep := len(c)
		for i, pr := range probs {
			cum += pr
			if cum >= float64(p) {
				keep = i + 1
				break
			}
		}
		c = c[:keep]
	}
	if mp := s.p.MinP; mp > 0 && len(c) > 1 {
		thr := c[0].l + float32(math.Log(float64(mp)))
		keep := 1
		for keep < len(c) && c[keep].l >= thr {
			keep++
		}
		c = c[:keep]
	}
	probs := softmax(c, s.p.Temperature)
	r := s.rng.Float64()
	cum := 0.0
	for i, pr := range probs {
		cum += pr
		if r < cum {
			return c[i].id
		}
	}
	return c[len(c)-1].id
}

func argmax(l []float32) int32 {
	best := 0
	for i, v := range l {
		if v > l[best] {
			best = i
		}
	}
	return int32(best)
}

// softmax returns the probabilities of candidates sorted by decreasing
// logit, at temperature t.
func softmax(c []cand, t float32) []float64 {
	out := make([]float64, len(c))
	mx := float64(c[0].l) / float64(t)
	sum := 0.0
	for i, x := range c {
		out[i] = math.Exp(float64(x.l)/float64(t) - mx)
		sum += out[i]
	}
	for i := range out {
		out[i] /= sum
	}
	return out
}

// minHeap orders candidates by increasing logit.
type minHeap []cand

func (h minHeap) Len() int           { return len(h) }
func (h minHeap) Less(i, j int) bool { return h[i].l < h[j].l }
func (h minHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *minHeap) Push(x any)        { *h = append(*h, x.(cand)) }
func (h *minHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// topK returns the k most likely candidates (all when k <= 0), unsorted.
func (s *Sampler) topK(logits []float32) []cand {
	k := s.p.TopK
	s.cand = s.cand[:0]
	if k <= 0 || k >= len(logits) {
		for i, l := range logits {
			s.cand = append(s.cand, cand{int32(i), l})
		}
		return s.cand
	}
	h := minHeap(s.cand)
	for i, l := range logits {
		if len(h) < k {
			heap.Push(&h, cand{int32(i), l})
		} else if l > h[0].l {
			h[0] = cand{int32(i), l}
			heap.Fix(&h, 0)
		}
	}
	s.cand = h
	return s.cand
}
