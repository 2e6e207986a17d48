// Package hub downloads models by name into a local cache: Hugging Face
// references hf://OWNER/REPO/PATH (resolved as
// https://huggingface.co/OWNER/REPO/resolve/REVISION/PATH) and plain
// https:// URLs. Downloads resume with HTTP Range requests (an interrupted
// transfer continues where it stopped, also in a later run), are checked
// against a sha256 when one is known (the hub's X-Linked-Etag or ETag, or
// one given by the caller) and appear under their final name only when
// complete (a temporary ".part" file is renamed).
package hub

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/schollz/progressbar/v3"
)

// Errors that callers branch on.
var (
	// ErrNotFound: the server has no such file (HTTP 404).
	ErrNotFound = errors.New("not found")
	// ErrChecksum: the downloaded bytes do not have the expected sha256.
	ErrChecksum = errors.New("sha256 mismatch")
	// ErrRef: the reference is not hf://OWNER/REPO/PATH or an http(s) URL.
	ErrRef = errors.New("invalid model reference")
)

// DefaultEndpoint is the Hugging Face hub.
const DefaultEndpoint = "https://huggingface.co"

// Options configure Pull.
type Options struct {
	// Cache is the cache directory (default: $GGTUNE_CACHE, else
	// ggtune/ in the user cache directory).
	Cache string
	// Revision of a Hugging Face reference (default "main").
	Revision string
	// SHA256 is the expected checksum (hex); it wins over the server's.
	SHA256 string
	// Token is sent as a bearer token to the hub (default: $HF_TOKEN). It
	// is sent only to the endpoint's host, not to redirect targets.
	Token string
	// Endpoint replaces DefaultEndpoint (default: $HF_ENDPOINT).
	Endpoint string
	// Progress, if not nil, receives a progress bar.
	Progress io.Writer
	// Client is the HTTP client (default: one with a 30 s header timeout).
	Client *http.Client
	// Retries is how often an interrupted transfer is resumed (default 3).
	Retries int
}

// IsRemote reports whether ref names a remote file (hf://, https:// or
// http://) rather than a local path.
func IsRemote(ref string) bool {
	return strings.HasPrefix(ref, "hf://") || strings.HasPrefix(ref, "https://") || strings.HasPrefix(ref, "http://")
}

// CacheDir returns the cache directory of opts.
func (o Options) CacheDir() (string, error) {
	if o.Cache != "" {
		return o.Cache, nil
	}
	if d := os.Getenv("GGTUNE_CACHE"); d != "" {
		return d, nil
	}
	d, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("cache directory: %w (set GGTUNE_CACHE)", err)
	}
	return filepath.Join(d, "ggtune"), nil
}

var safePart = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)

// Locate returns the URL of ref and the path where the cache keeps it.
func Locate(ref string, opts Options) (string, string, error) {
	cache, err := opts.CacheDir()
	if err != nil {
		return "", "", err
	}
	var u, rel string
	switch {
	case strings.HasPrefix(ref, "hf://"):
		parts := strings.Split(strings.TrimPrefix(ref, "hf://"), "/")
		if len(parts) < 3 {
			return "", "", fmt.Errorf("%w: %q (want hf://OWNER/REPO/FILE.gguf)", ErrRef, ref)
		}
		rev := opts.Revision
		if rev == "" {
			rev = "main"
		}
		for _, p := range append(parts, rev) {
			if !safePart.MatchString(p) {
				return "", "", fmt.Errorf("%w: %q: bad path element %q", ErrRef, ref, p)
			}
		}
		ep := opts.Endpoint
		if ep == "" {
			ep = os.Getenv("HF_ENDPOINT")
		}
		if ep == "" {
			ep = DefaultEndpoint
		}
		u = strings.TrimSuffix(ep, "/") + "/" + parts[0] + "/" + parts[1] + "/resolve/" + url.PathEscape(rev) + "/" + strings.Join(parts[2:], "/")
		rel = filepath.Join(append([]string{"hf", parts[0], parts[1], rev}, parts[2:]...)...)
	case strings.HasPrefix(ref, "https://") || strings.HasPrefix(ref, "http://"):
		pu, err := url.Parse(ref)
		if err != nil || pu.Host == "" {
			return "", "", fmt.Errorf("%w: %q", ErrRef, ref)
		}
		clean := path.Clean("/" + pu.Path)
		name := path.Base(clean)
		if !safePart.MatchString(name) {
			return "", "", fmt.Errorf("%w: %q has no file name", ErrRef, ref)
		}
		// The URL's hash keeps distinct URLs (queries, paths) apart.
		h := sha256.Sum256([]byte(ref))
		u = ref
		rel = filepath.Join("url", strings.ReplaceAll(pu.Host, ":", "_"), hex.EncodeToString(h[:8]), name)
	default:
		return "", "", fmt.Errorf("%w: %q (want hf://OWNER/REPO/FILE.gguf or https://...)", ErrRef, ref)
	}
	return u, filepath.Join(cache, rel), nil
}

// Resolve returns a local path for ref: ref itself when it is not remote,
// else the cached file, downloaded first when it is not in the cache.
func Resolve(ctx context.Context, ref string, opts Options) (string, error) {
	if !IsRemote(ref) {
		return ref, nil
	}
	_, dest, err := Locate(ref, opts)
	if err != nil {
		return "", err
	}
	if _, err := os.Stat(dest); err == nil {
		return dest, nil
	}
	return Pull(ctx, ref, opts)
}

var hexSHA = regexp.MustCompile(`^[0-9a-f]{64}$`)

// Pull downloads ref into the cache, resuming a partial download that an
// earlier, interrupted run left (and retrying an interrupted transfer up
// to opts.Retries times; negative: never), and returns the path of the
// complete, verified file. A copy already in the cache is replaced.
func Pull(ctx context.Context, ref string, opts Options) (string, error) {
	u, dest, err := Locate(ref, opts)
	if err != nil {
		return "", err
	}
	if opts.SHA256 != "" && !hexSHA.MatchString(strings.ToLower(opts.SHA256)) {
		return "", fmt.Errorf("pull %s: --sha256 %q is not 64 hex digits", ref, opts.SHA256)
	}
	if err := os.MkdirAll(filepath.Dir(dest), 0o755); err != nil {
		return "", fmt.Errorf("pull %s: %w", ref, err)
	}
	d := &download{ref: ref, url: u, part: dest + ".part", opts: opts, want: strings.ToLower(opts.SHA256)}
	if d.opts.Token == "" {
		d.opts.Token = os.Getenv("HF_TOKEN")
	}
	retries := opts.Retries
	if retries == 0 {
		retries = 3
	}
	for attempt := 0; ; attempt++ {
		err = d.fetch(ctx)
		if err == nil || ctx.Err() != nil || !errors.Is(err, errInterrupted) || attempt >= retries {
			break
		}
		time.Sleep(time.Duration(attempt+1) * 200 * time.Millisecond)
	}
	if err != nil {
		return "", fmt.Errorf("pull %s: %w", ref, err)
	}
	if err := d.verify(); err != nil {
		os.Remove(d.part)
		return "", fmt.Errorf("pull %s: %w", ref, err)
	}
	if err := os.Rename(d.part, dest); err != nil {
		return "", fmt.Errorf("pull %s: %w", ref, err)
	}
	return dest, nil
}

// errInterrupted marks a transfer that stopped early and can resume.
var errInterrupted = errors.New("transfer interrupted")

type download struct {
	ref, url, part string
	opts           Options
	want           string // expected sha256 (hex), from the caller or the server
}

func (d *download) client() *http.Client {
	c := d.opts.Client
	if c == nil {
		c = &http.Client{Transport: &http.Transport{Proxy: http.ProxyFromEnvironment, ResponseHeaderTimeout: 30 * time.Second}}
	}
	cc := *c
	// The hub answers with a redirect to its CDN; the checksum headers are
	// on the redirect response.
	cc.CheckRedirect = func(req *http.Request, via []*http.Request) error {
		if len(via) >= 10 {
			return errors.New("too many redirects")
		}
		if r := req.Response; r != nil {
			d.learn(r.Header)
		}
		if req.URL.Host != via[0].URL.Host {
			req.Header.Del("Authorization")
		}
		return nil
	}
	return &cc
}

// learn takes the expected checksum from the hub's headers unless the
// caller gave one: X-Linked-Etag (files stored in LFS) or an ETag that is
// a sha256.
func (d *download) learn(h http.Header) {
	if d.opts.SHA256 != "" {
		return
	}
	for _, k := range []string{"X-Linked-Etag", "Etag"} {
		v := strings.ToLower(strings.Trim(strings.TrimPrefix(h.Get(k), "W/"), `"`))
		if hexSHA.MatchString(v) {
			d.want = v
			return
		}
	}
}

// fetch appends the rest of the file to the .part file.
func (d *download) fetch(ctx context.Context) error {
	f, err := os.OpenFile(d.part, os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	have, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, d.url, nil)
	if err != nil {
		return err
	}
	req.Header.Set("User-Agent", "ggtune")
	if d.opts.Token != "" && strings.HasPrefix(d.ref, "hf://") {
		req.Header.Set("Authorization", "Bearer "+d.opts.Token)
	}
	if have > 0 {
		req.Header.Set("Range", fmt.Sprintf("bytes=%d-", have))
	}
	resp, err := d.client().Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("%w: %v", errInterrupted, err)
	}
	defer resp.Body.Close()
	d.learn(resp.Header)
	total := int64(-1)
	switch resp.StatusCode {
	case http.StatusOK: // no range support, or a fresh start
		if err := f.Truncate(0); err != nil {
			return err
		}
		if _, err := f.Seek(0, io.SeekStart); err != nil {
			return err
		}
		have, total = 0, resp.ContentLength
	case http.StatusPartialContent:
		start, size, ok := contentRange(resp.Header.Get("Content-Range"))
		if !ok || start != have {
			return fmt.Errorf("%s: bad Content-Range %q for a resume at %d", d.url, resp.Header.Get("Content-Range"), have)
		}
		total = size
	case http.StatusRequestedRangeNotSatisfiable:
		if _, size, ok := contentRange(resp.Header.Get("Content-Range")); ok && size == have {
			return nil // already complete
		}
		return fmt.Errorf("%s: range %d- not satisfiable", d.url, have)
	case http.StatusNotFound:
		return fmt.Errorf("%s: %w (HTTP 404)", d.url, ErrNotFound)
	case http.StatusUnauthorized, http.StatusForbidden:
		return fmt.Errorf("%s: HTTP %d (a gated or private repository needs HF_TOKEN)", d.url, resp.StatusCode)
	default:
		return fmt.Errorf("%s: HTTP %d", d.url, resp.StatusCode)
	}
	var w io.Writer = f
	if d.opts.Progress != nil {
		bar := progressbar.NewOptions64(total, progressbar.OptionSetWriter(d.opts.Progress),
			progressbar.OptionSetDescription(path.Base(d.url)), progressbar.OptionShowBytes(true),
			progressbar.OptionThrottle(200*time.Millisecond), progressbar.OptionOnCompletion(func() { fmt.Fprintln(d.opts.Progress) }))
		bar.Set64(have)
		w = io.MultiWriter(f, bar)
	}
	n, err := io.Copy(w, resp.Body)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("%w after %d bytes: %v", errInterrupted, have+n, err)
	}
	if total >= 0 && have+n != total {
		return fmt.Errorf("%w: %d of %d bytes", errInterrupted, have+n, total)
	}
	return f.Sync()
}

// contentRange parses "bytes START-END/SIZE".
func contentRange(s string) (start, size int64, ok bool) {
	var end int64
	if _, err := fmt.Sscanf(s, "bytes %d-%d/%d", &start, &end, &size); err == nil {
		return start, size, true
	}
	if v, found := strings.CutPrefix(s, "bytes */"); found {
		size, err := strconv.ParseInt(v, 10, 64)
		return 0, size, err == nil
	}
	return 0, 0, false
}

// verify checks the complete .part file against the expected checksum.
func (d *download) verify() error {
	if d.want == "" {
		return nil
	}
	f, err := os.Open(d.part)
	if err != nil {
		return err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return err
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != d.want {
		return fmt.Errorf("%w: got %s, want %s (the partial file was removed)", ErrChecksum, got, d.want)
	}
	return nil
}
