package finetune

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"

	"github.com/ggtune/ggtune/binding"
	"github.com/ggtune/ggtune/data"
	"github.com/ggtune/ggtune/internal/atomicfile"
	"github.com/ggtune/ggtune/model"
	"github.com/ggtune/ggtune/train"
)

// ErrStaleCache reports a teacher cache built for other settings (teacher,
// adapters, data, temperature, top-k): it is refused, never reused.
var ErrStaleCache = errors.New("stale teacher cache")

// ErrCorruptCache reports a teacher cache file that fails its checksum or
// format checks.
var ErrCorruptCache = errors.New("corrupt teacher cache")

// topkMagic starts a teacher cache file.
const topkMagic = "GGTUNETK"

// logProbScale quantizes log-probabilities: a cache stores
// round(−log p · logProbScale) as uint16, so log-probabilities keep 1/1024
// of resolution down to −64 (where they are clamped).
const logProbScale = 1024

// cacheKey identifies what a teacher cache was computed from; a cache whose
// key differs from the run's is stale.
type cacheKey struct {
	Version     int      `json:"version"`
	Teacher     string   `json:"teacher"`  // size and SHA-256 of the teacher file
	Adapters    []string `json:"adapters"` // size, SHA-256 and scale of each teacher adapter
	Data        string   `json:"data"`     // SHA-256 of the data set's tokens and target flags
	Examples    int      `json:"examples"`
	Positions   int      `json:"positions"` // positions with a target
	Temperature float64  `json:"temperature"`
	TopK        int      `json:"top_k"`
	Vocab       int      `json:"vocab"`
}

// TopKCache holds a teacher's top-k predictions for every target position
// of one data set: per position K token ids (uint16, or uint32 for
// vocabularies past 65536) and K+1 quantized log-probabilities at the
// distillation temperature (the K tokens, then the tail mass), about
// 4·K bytes per position (514 bytes at K = 128).
//
// The file is DIR/NAME.topk: the magic "GGTUNETK", a little-endian uint32
// length and that many bytes of JSON key, the entries in data-set order
// (example by example, position by position), and the SHA-256 of
// everything before it.
type TopKCache struct {
	key     cacheKey
	idBytes int
	entries []byte
	slot    [][]int32 // per example and position, the entry index or -1
}

func (c *TopKCache) entrySize() int { return c.key.TopK*c.idBytes + (c.key.TopK+1)*2 }

// targetSlots numbers the positions with a target, example by example.
func targetSlots(ds *data.Dataset) ([][]int32, int) {
	slot := make([][]int32, len(ds.Examples))
	n := 0
	for e, ex := range ds.Examples {
		slot[e] = make([]int32, len(ex.Tokens))
		for t := range ex.Tokens {
			slot[e][t] = -1
			if t+1 < len(ex.Tokens) && ex.Target[t+1] {
				slot[e][t] = int32(n)
				n++
			}
		}
	}
	return slot, n
}

// dataHash fingerprints the data set's examples.
func dataHash(ds *data.Dataset) string {
	h := sha256.New()
	var buf []byte
	for _, ex := range ds.Examples {
		buf = binary.LittleEndian.AppendUint32(buf[:0], uint32(len(ex.Tokens)))
		for i, tok := range ex.Tokens {
			flag := byte(0)
			if ex.Target[i] {
				flag = 1
			}
			buf = append(binary.LittleEndian.AppendUint32(buf, uint32(tok)), flag)
		}
		h.Write(buf)
	}
	return fmt.Sprintf("%x", h.Sum(nil))
}

// newCacheKey computes the key of a cache for d's teacher over ds.
func newCacheKey(d *Distillation, ds *data.Dataset, vocab int) (cacheKey, error) {
	fp, err := fingerprint(d.Teacher, true)
	if err != nil {
		return cacheKey{}, fmt.Errorf("teacher cache: %w", err)
	}
	k := cacheKey{Version: 1, Teacher: fp, Adapters: []string{}, Data: dataHash(ds), Examples: len(ds.Examples),
		Temperature: d.Loss.Temperature, TopK: d.topK(), Vocab: vocab}
	_, k.Positions = targetSlots(ds)
	for _, a := range d.TeacherAdapters {
		fp, err := fingerprint(a.Path, true)
		if err != nil {
			return cacheKey{}, fmt.Errorf("teacher cache: %w", err)
		}
		k.Adapters = append(k.Adapters, fmt.Sprintf("%s, scale %g", fp, a.Scale))
	}
	return k, nil
}

// openTopKCache reads the cache file path, which must have been computed
// with key: a file of other settings is ErrStaleCache (naming what
// differs), a damaged one ErrCorruptCache.
func openTopKCache(path string, key cacheKey, ds *data.Dataset) (*TopKCache, error) {
	if st, err := os.Stat(path); err != nil || !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%w: %s is not a regular file (%v)", ErrCorruptCache, path, err)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("teacher cache: %w", err)
	}
	corrupt := func(why string) error {
		return fmt.Errorf("%w: %s: %s; delete it to recompute", ErrCorruptCache, path, why)
	}
	if len(raw) < len(topkMagic)+4+sha256.Size || string(raw[:len(topkMagic)]) != topkMagic {
		return nil, corrupt("not a ggtune teacher cache")
	}
	body, sum := raw[:len(raw)-sha256.Size], raw[len(raw)-sha256.Size:]
	if h := sha256.Sum256(body); !bytes.Equal(h[:], sum) {
		return nil, corrupt("checksum mismatch")
	}
	n := int(binary.LittleEndian.Uint32(raw[len(topkMagic):]))
	off := len(topkMagic) + 4
	if n > len(body)-off {
		return nil, corrupt("truncated header")
	}
	var got cacheKey
	if err := json.Unmarshal(body[off:off+n], &got); err != nil {
		return nil, corrupt("bad header: " + err.Error())
	}
	if diff := keyDiff(got, key); diff != "" {
		return nil, fmt.Errorf("%w: %s was computed for other settings (%s); delete it or choose another --teacher-cache", ErrStaleCache, path, diff)
	}
	c := &TopKCache{key: key, idBytes: idBytes(key.Vocab), entries: body[off+n:]}
	if len(c.entries) != key.Positions*c.entrySize() {
		return nil, corrupt(fmt.Sprintf("%d bytes of entries, want %d", len(c.entries), key.Positions*c.entrySize()))
	}
	c.slot, _ = targetSlots(ds)
	return c, nil
}

// keyDiff names the fields in which two keys differ ("" if none).
func keyDiff(a, b cacheKey) string {
	var am, bm map[string]any
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	_ = json.Unmarshal(ja, &am)
	_ = json.Unmarshal(jb, &bm)
	var diff []string
	for k := range bm {
		if fmt.Sprint(am[k]) != fmt.Sprint(bm[k]) {
			diff = append(diff, fmt.Sprintf("%s: cache %v, now %v", k, am[k], bm[k]))
		}
	}
	slices.Sort(diff)
	if len(diff) == 0 {
		return ""
	}
	return fmt.Sprint(diff)
}

func idBytes(vocab int) int {
	if vocab <= 1<<16 {
		return 2
	}
	return 4
}

// buildTopKCache runs the teacher over ds (b×t batches) and writes the
// cache to path atomically.
func buildTopKCache(path string, key cacheKey, ds *data.Dataset, tm *model.Model, hooks []model.Hook, b, t int) (*TopKCache, error) {
	c := &TopKCache{key: key, idBytes: idBytes(key.Vocab)}
	c.slot, _ = targetSlots(ds)
	c.entries = make([]byte, key.Positions*c.entrySize())
	eng, err := newTeacherRunner(tm, hooks, b, t)
	if err != nil {
		return nil, err
	}
	defer eng.close()
	l, err := data.NewLoader(ds, data.LoaderConfig{Batch: b, Context: t, Pack: true, Epochs: 1})
	if err != nil {
		return nil, err
	}
	v, k := key.Vocab, key.TopK
	lp := make([]float64, v)
	top := make([]int32, 0, k)
	for {
		batch, err := l.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, err
		}
		tb := toTrainBatch(batch)
		logits, err := eng.logits(tb.Tokens, tb.Segments)
		if err != nil {
			return nil, fmt.Errorf("teacher cache: %w", err)
		}
		ex := batchExamples(batch)
		for i, label := range batch.Labels {
			if label < 0 {
				continue
			}
			entry := c.slot[ex[i]][batch.Positions[i]]
			logSoftmax(logits[i*v:(i+1)*v], key.Temperature, lp)
			top = topTokens(lp, top[:0], k)
			c.put(int(entry), top, lp)
		}
	}
	err = os.MkdirAll(filepath.Dir(path), 0o755)
	if err == nil {
		err = atomicfile.Write(path, func(w io.Writer) error {
			hdr, err := json.Marshal(key)
			if err != nil {
				return err
			}
			h := sha256.New()
			mw := io.MultiWriter(w, h)
			body := append(binary.LittleEndian.AppendUint32([]byte(topkMagic), uint32(len(hdr))), hdr...)
			if _, err := mw.Write(body); err != nil {
				return err
			}
			if _, err := mw.Write(c.entries); err != nil {
				return err
			}
			_, err = w.Write(h.Sum(nil))
			return err
		})
	}
	if err != nil {
		return nil, fmt.Errorf("teacher cache: %w", err)
	}
	return c, nil
}

// topTokens appends to top the k tokens of highest lp (ties: lower ids
// first), most probable first: a selection in O(V log k).
func topTokens(lp []float64, top []int32, k int) []int32 {
	// better reports whether token a ranks above token b
	better := func(a, b int32) bool { return lp[a] > lp[b] || (lp[a] == lp[b] && a < b) }
	h := top // a min-heap of the best k so far: h[0] ranks lowest
	down := func(i int) {
		for {
			c := 2*i + 1
			if c >= len(h) {
				return
			}
			if c+1 < len(h) && better(h[c], h[c+1]) {
				c++
			}
			if !better(h[i], h[c]) {
				return
			}
			h[i], h[c] = h[c], h[i]
			i = c
		}
	}
	for j := range lp {
		id := int32(j)
		switch {
		case len(h) < k:
			h = append(h, id)
			for i := len(h) - 1; i > 0 && better(h[(i-1)/2], h[i]); i = (i - 1) / 2 {
				h[i], h[(i-1)/2] = h[(i-1)/2], h[i]
			}
		case better(id, h[0]):
			h[0] = id
			down(0)
		}
	}
	slices.SortFunc(h, func(a, b int32) int {
		if better(a, b) {
			return -1
		}
		return 1
	})
	return h
}

// logSoftmax writes log softmax(z/temp) to out.
func logSoftmax(z []float32, temp float64, out []float64) {
	mx := math.Inf(-1)
	for _, x := range z {
		mx = max(mx, float64(x)/temp)
	}
	s := 0.0
	for j, x := range z {
		out[j] = float64(x)/temp - mx
		s += math.Exp(out[j])
	}
	ls := math.Log(s)
	for j := range out {
		out[j] -= ls
	}
}

func quantLogProb(lp float64) uint16 {
	return uint16(math.Round(min(max(-lp*logProbScale, 0), math.MaxUint16)))
}

// put stores the entry of the tokens ids with log-probabilities lp.
func (c *TopKCache) put(entry int, ids []int32, lp []float64) {
	e := c.entries[entry*c.entrySize():]
	mass := 0.0
	for i, id := range ids {
		if c.idBytes == 2 {
			binary.LittleEndian.PutUint16(e[2*i:], uint16(id))
		} else {
			binary.LittleEndian.PutUint32(e[4*i:], uint32(id))
		}
		mass += math.Exp(lp[id])
	}
	q := e[len(ids)*c.idBytes:]
	for i, id := range ids {
		binary.LittleEndian.PutUint16(q[2*i:], quantLogProb(lp[id]))
	}
	binary.LittleEndian.PutUint16(q[2*len(ids):], quantLogProb(math.Log(max(1-mass, 0))))
}

// batchExamples returns the data-set example index of each position of b
// (-1 at padding).
func batchExamples(b *data.Batch) []int {
	out := make([]int, len(b.Segments))
	next := 0
	for r := 0; r < b.B; r++ {
		base := next
		for t := 0; t < b.T; t++ {
			i := r*b.T + t
			s := int(b.Segments[i])
			if s == 0 {
				out[i] = -1
				continue
			}
			out[i] = b.Examples[base+s-1]
			next = max(next, base+s)
		}
	}
	return out
}

// attach fills tb.Teacher with the cached predictions for batch b.
func (c *TopKCache) attach(b *data.Batch, tb *train.Batch) error {
	k, n := c.key.TopK, b.B*b.T
	tk := &train.TeacherTopK{K: k, IDs: make([]int32, k*n), LogProbs: make([]float32, (k+1)*n)}
	ex := batchExamples(b)
	for i, label := range b.Labels {
		if label < 0 {
			continue
		}
		if ex[i] < 0 || ex[i] >= len(c.slot) || int(b.Positions[i]) >= len(c.slot[ex[i]]) || c.slot[ex[i]][b.Positions[i]] < 0 {
			return fmt.Errorf("%w: no cached teacher prediction for example %d position %d", ErrCorruptCache, ex[i], b.Positions[i])
		}
		e := c.entries[int(c.slot[ex[i]][b.Positions[i]])*c.entrySize():]
		for j := 0; j < k; j++ {
			if c.idBytes == 2 {
				tk.IDs[i*k+j] = int32(binary.LittleEndian.Uint16(e[2*j:]))
			} else {
				tk.IDs[i*k+j] = int32(binary.LittleEndian.Uint32(e[4*j:]))
			}
		}
		q := e[k*c.idBytes:]
		for j := 0; j <= k; j++ {
			tk.LogProbs[i*(k+1)+j] = -float32(binary.LittleEndian.Uint16(q[2*j:])) / logProbScale
		}
	}
	tb.Teacher = tk
	return nil
}

// teacherRunner computes a teacher's logits for b×t batches with one
// graph built once.
type teacherRunner struct {
	ctx   *binding.Context
	graph *binding.Graph
	alloc *binding.Allocator
	fwd   *model.Forward
	be    *binding.Backend
}

func newTeacherRunner(m *model.Model, hooks []model.Hook, b, t int) (*teacherRunner, error) {
	size := m.GraphSize()
	ctx, err := binding.NewGraphContext(size, size, false)
	if err != nil {
		return nil, err
	}
	r := &teacherRunner{ctx: ctx, be: m.Backend()}
	if r.fwd, err = m.BuildForward(ctx, model.Shape{Batch: b, Tokens: t}, hooks); err != nil {
		r.close()
		return nil, fmt.Errorf("teacher: %w", err)
	}
	if r.graph, err = ctx.NewGraph(size, false); err == nil {
		err = r.graph.BuildForward(r.fwd.Logits)
	}
	if err == nil {
		r.alloc, err = r.be.NewAllocator()
	}
	if err == nil {
		err = r.alloc.Alloc(r.graph)
	}
	if err != nil {
		r.close()
		return nil, fmt.Errorf("teacher: %w", err)
	}
	return r, nil
}

func (r *teacherRunner) logits(tokens, segments []int32) ([]float32, error) {
	if err := r.fwd.SetBatch(tokens, segments); err != nil {
		return nil, err
	}
	if err := r.be.Compute(r.graph); err != nil {
		return nil, err
	}
	return r.fwd.Logits.Floats()
}

func (r *teacherRunner) close() {
	r.alloc.Close()
	r.ctx.Close()
}
