package hub_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ggtune/ggtune/hub"
)

// fakeHub is a local stand-in for the Hugging Face hub and its CDN: the hub
// answers /OWNER/REPO/resolve/REV/FILE with a redirect carrying
// X-Linked-Etag, the CDN serves the bytes with Range support and can cut
// the first transfer short.
type fakeHub struct {
	hub, cdn *httptest.Server
	content  []byte
	sha      string
	mu       sync.Mutex
	cutFirst bool // break the first body halfway
	ranges   []string
	auth     []string // Authorization seen by the hub, then by the CDN
	cdnAuth  []string
	hubHits  int
	badETag  bool
}

func newFakeHub(t *testing.T, size int) *fakeHub {
	h := &fakeHub{content: make([]byte, size)}
	rng := rand.New(rand.NewPCG(1, 1))
	for i := range h.content {
		h.content[i] = byte(rng.Uint32())
	}
	s := sha256.Sum256(h.content)
	h.sha = hex.EncodeToString(s[:])
	h.cdn = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.mu.Lock()
		h.ranges = append(h.ranges, r.Header.Get("Range"))
		h.cdnAuth = append(h.cdnAuth, r.Header.Get("Authorization"))
		cut := h.cutFirst
		h.cutFirst = false
		h.mu.Unlock()
		if cut {
			w.Header().Set("Content-Length", strconv.Itoa(len(h.content)))
			w.WriteHeader(http.StatusOK)
			w.Write(h.content[:len(h.content)/2])
			w.(http.Flusher).Flush()
			conn, _, err := w.(http.Hijacker).Hijack()
			if err == nil {
				conn.Close()
			}
			return
		}
		http.ServeContent(w, r, "model.gguf", time.Unix(0, 0), bytes.NewReader(h.content))
	}))
	h.hub = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.mu.Lock()
		h.hubHits++
		h.auth = append(h.auth, r.Header.Get("Authorization"))
		h.mu.Unlock()
		if r.URL.Path != "/owner/repo/resolve/main/model.gguf" && r.URL.Path != "/owner/repo/resolve/v2/sub/model.gguf" {
			http.NotFound(w, r)
			return
		}
		sha := h.sha
		if h.badETag {
			sha = strings.Repeat("0", 64)
		}
		w.Header().Set("X-Linked-Etag", `"`+sha+`"`)
		http.Redirect(w, r, h.cdn.URL+"/blob/"+sha, http.StatusFound)
	}))
	t.Cleanup(h.hub.Close)
	t.Cleanup(h.cdn.Close)
	return h
}

func (h *fakeHub) opts(t *testing.T) hub.Options {
	return hub.Options{Cache: t.TempDir(), Endpoint: h.hub.URL, Token: "secret", Retries: -1}
}

func TestPullHF(t *testing.T) {
	h := newFakeHub(t, 1<<20)
	o := h.opts(t)
	var progress bytes.Buffer
	o.Progress = &progress
	p, err := hub.Pull(context.Background(), "hf://owner/repo/model.gguf", o)
	require.NoError(t, err)
	assert.Equal(t, filepath.Join(o.Cache, "hf", "owner", "repo", "main", "model.gguf"), p)
	b, err := os.ReadFile(p)
	require.NoError(t, err)
	assert.Equal(t, h.content, b)
	assert.NoFileExists(t, p+".part")
	assert.Equal(t, []string{"Bearer secret"}, h.auth, "the token goes to the hub")
	assert.Equal(t, []string{""}, h.cdnAuth, "and not to the redirect target")
	assert.Contains(t, progress.String(), "model.gguf")

	// -m hf://... resolves through the cache without asking the server.
	got, err := hub.Resolve(context.Background(), "hf://owner/repo/model.gguf", o)
	require.NoError(t, err)
	assert.Equal(t, p, got)
	assert.Equal(t, 1, h.hubHits)
	local, err := hub.Resolve(context.Background(), "models/x.gguf", o)
	require.NoError(t, err)
	assert.Equal(t, "models/x.gguf", local)

	// --revision and a file in a folder.
	o.Revision = "v2"
	p2, err := hub.Pull(context.Background(), "hf://owner/repo/sub/model.gguf", o)
	require.NoError(t, err)
	assert.Equal(t, filepath.Join(o.Cache, "hf", "owner", "repo", "v2", "sub", "model.gguf"), p2)
}

func TestPullResume(t *testing.T) {
	h := newFakeHub(t, 300000)
	o := h.opts(t)
	// An interrupted body fails the run and keeps the partial file...
	h.cutFirst = true
	_, err := hub.Pull(context.Background(), "hf://owner/repo/model.gguf", o)
	require.Error(t, err)
	_, dest, err := hub.Locate("hf://owner/repo/model.gguf", o)
	require.NoError(t, err)
	part, err := os.ReadFile(dest + ".part")
	require.NoError(t, err)
	require.Equal(t, h.content[:len(part)], part)
	require.NotEmpty(t, part)
	assert.NoFileExists(t, dest)
	// ...and the next run resumes with a Range request.
	p, err := hub.Pull(context.Background(), "hf://owner/repo/model.gguf", o)
	require.NoError(t, err)
	b, err := os.ReadFile(p)
	require.NoError(t, err)
	assert.Equal(t, h.content, b)
	assert.Equal(t, []string{"", "bytes=" + strconv.Itoa(len(part)) + "-"}, h.ranges)

	// With retries the same happens within one run.
	h2 := newFakeHub(t, 200000)
	o2 := h2.opts(t)
	o2.Retries = 2
	h2.cutFirst = true
	p, err = hub.Pull(context.Background(), "hf://owner/repo/model.gguf", o2)
	require.NoError(t, err)
	b, err = os.ReadFile(p)
	require.NoError(t, err)
	assert.Equal(t, h2.content, b)
	require.Len(t, h2.ranges, 2)
	assert.True(t, strings.HasPrefix(h2.ranges[1], "bytes="), h2.ranges[1])
}

func TestPullErrors(t *testing.T) {
	h := newFakeHub(t, 5000)
	o := h.opts(t)
	_, err := hub.Pull(context.Background(), "hf://owner/repo/missing.gguf", o)
	require.ErrorIs(t, err, hub.ErrNotFound)
	assert.Contains(t, err.Error(), "missing.gguf")

	// A checksum given by the caller that the bytes do not have.
	bad := o
	bad.SHA256 = strings.Repeat("ab", 32)
	_, err = hub.Pull(context.Background(), "hf://owner/repo/model.gguf", bad)
	require.ErrorIs(t, err, hub.ErrChecksum)
	_, dest, _ := hub.Locate("hf://owner/repo/model.gguf", o)
	assert.NoFileExists(t, dest)
	assert.NoFileExists(t, dest+".part")

	// The hub's own checksum header disagrees with the bytes.
	h.badETag = true
	_, err = hub.Pull(context.Background(), "hf://owner/repo/model.gguf", o)
	require.ErrorIs(t, err, hub.ErrChecksum)
	h.badETag = false

	// The caller's checksum wins over the header; a malformed one is refused.
	good := o
	good.SHA256 = strings.ToUpper(h.sha)
	_, err = hub.Pull(context.Background(), "hf://owner/repo/model.gguf", good)
	require.NoError(t, err)
	good.SHA256 = "xyz"
	_, err = hub.Pull(context.Background(), "hf://owner/repo/model.gguf", good)
	require.ErrorContains(t, err, "not 64 hex digits")

	for _, ref := range []string{"hf://owner/repo", "hf://owner/../x.gguf", "ftp://x/y.gguf", "https://host/"} {
		_, err = hub.Pull(context.Background(), ref, o)
		require.ErrorIs(t, err, hub.ErrRef, ref)
	}
}

func TestPullURL(t *testing.T) {
	h := newFakeHub(t, 10000)
	o := h.opts(t)
	o.SHA256 = h.sha
	u := h.cdn.URL + "/files/model.gguf?download=1"
	p, err := hub.Pull(context.Background(), u, o)
	require.NoError(t, err)
	assert.Equal(t, "model.gguf", filepath.Base(p))
	b, err := os.ReadFile(p)
	require.NoError(t, err)
	assert.Equal(t, h.content, b)
	assert.Equal(t, []string{""}, h.cdnAuth, "no token for plain URLs")

	// A cancelled context stops the download and keeps nothing complete.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	o.Cache = t.TempDir()
	_, err = hub.Pull(ctx, u, o)
	require.ErrorIs(t, err, context.Canceled)
}
