// Package method is ggtune's registry of fine-tuning methods. A method
// (LoRA, full fine-tuning, a soft prompt, IA3, ...) is a plugin: it
// implements Method and registers itself with Register from its package's
// init function; finetune, the CLI and the tests find every method here,
// and Open loads any adapter file by dispatching on its adapter.type.
//
// Capabilities that only some methods have are separate interfaces that an
// Instance or Method may implement: WeightTrainer (base weights become
// trainable), Merger (fold into the base weights), PEFTExporter and
// PEFTImporter (Hugging Face PEFT layouts).
package method

import (
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"

	"github.com/spf13/pflag"

	"github.com/ggtune/ggtune/binding"
	"github.com/ggtune/ggtune/model"
	"github.com/ggtune/ggtune/train"
)

// Info describes a method for help texts and defaults.
type Info struct {
	// Short is the one-line description of `ggtune train NAME`.
	Short string
	// Output says what the method writes, e.g. "LoRA adapter GGUF".
	Output string
	// LR is the default peak learning rate.
	LR float64
}

// Method is a fine-tuning method.
type Method interface {
	// Name is the method's name and CLI verb, e.g. "lora".
	Name() string
	// Info returns the method's description and defaults.
	Info() Info
	// AdapterTypes lists the adapter.type values of the files the method
	// loads (none for methods that write full models).
	AdapterTypes() []string
	// NewConfig returns a configuration with the method's defaults.
	NewConfig() Config
	// New creates fresh trainable state for cfg (as returned by
	// NewConfig, possibly changed, and resolved) on env's model.
	New(env *Env, cfg Config) (Instance, error)
	// Load reads an instance from a file of one of AdapterTypes, checked
	// against env's base model; env.Model may be nil.
	Load(path string, env *Env) (Instance, error)
}

// Config is a method's configuration.
type Config interface {
	// AddFlags registers the configuration's command-line flags, bound to
	// its fields.
	AddFlags(fs *pflag.FlagSet)
	// Resolve completes the configuration for the base model (for
	// example a layer selection relative to its depth) and validates it.
	// It is idempotent.
	Resolve(base *binding.GGUFFile) error
}

// Instance is a method's trainable or loaded state.
type Instance interface {
	// Hooks returns the model hooks that apply the instance at scale
	// (1 for training; soft prompts ignore the scale).
	Hooks(scale float32) []model.Hook
	// Groups returns the trainable tensors (marked as graph parameters)
	// grouped by optimizer settings.
	Groups() ([]train.Group, error)
	// Save writes the instance atomically.
	Save(path string) error
	// Close frees the instance's memory; it is idempotent.
	Close()
}

// WeightTrainer is implemented by methods that train base weights (full
// and head-only fine-tuning): the model is loaded with the selected
// weights as F32 parameters.
type WeightTrainer interface {
	Trainable(cfg Config, base *binding.GGUFFile) (func(name string) bool, error)
}

// Merger is implemented by instances that can be folded into the base
// model's weights (see Merge).
type Merger interface {
	// MergesInto reports whether the instance changes the base tensor name.
	MergesInto(name string) bool
	// MergeInto folds the instance at scale into vals, the F32 values of
	// base tensor name with ggml shape ne.
	MergeInto(name string, ne []int64, vals []float32, scale float32) error
}

// PEFTExporter is implemented by instances that can be written in Hugging
// Face PEFT's layout (adapter_config.json + adapter_model.safetensors).
type PEFTExporter interface {
	ExportPEFT(dir, baseModel string) error
}

// PEFTImporter is implemented by methods that read PEFT adapter
// directories of the given peft_type values.
type PEFTImporter interface {
	PEFTTypes() []string
	ImportPEFT(dir string, env *Env) (Instance, error)
}

// Env is what a method sees of the base model.
type Env struct {
	// Model is the loaded model (nil where only the file is needed:
	// merging, PEFT conversion).
	Model *model.Model
	// Base is the base model file's header; Config is read from it.
	Base     *binding.GGUFFile
	BasePath string
	Config   model.Config
	// Backend allocates the instance's tensors.
	Backend *binding.Backend
	// Seed seeds initialisation.
	Seed uint64
	// Meta is extra metadata a trained instance saves (base model, data).
	Meta map[string]any
}

// NewEnv opens the base model file's header and reads its configuration;
// the caller closes the Env. m (may be nil) is the loaded model.
func NewEnv(basePath string, m *model.Model, backend *binding.Backend) (*Env, error) {
	f, err := binding.OpenGGUF(basePath)
	if err != nil {
		return nil, err
	}
	cfg, err := model.ReadConfig(f)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: %w", basePath, err)
	}
	return &Env{Model: m, Base: f, BasePath: basePath, Config: cfg, Backend: backend, Meta: map[string]any{}}, nil
}

// Close closes the base file's header. It is idempotent.
func (e *Env) Close() {
	if e != nil && e.Base != nil {
		e.Base.Close()
		e.Base = nil
	}
}

// Errors callers branch on.
var (
	// ErrUnknownMethod reports a method name nobody registered.
	ErrUnknownMethod = errors.New("unknown method")
	// ErrUnknownAdapter reports an adapter file whose adapter.type no
	// method reads.
	ErrUnknownAdapter = errors.New("unknown adapter type")
	// ErrNotAdapter reports a file that is not an adapter (general.type
	// is not "adapter").
	ErrNotAdapter = errors.New("not an adapter file")
	// ErrUnsupported reports a capability the method lacks (merge, PEFT).
	ErrUnsupported = errors.New("not supported by the method")
)

var (
	mu      sync.RWMutex
	methods = map[string]Method{}
	byType  = map[string]Method{}
)

// Register adds a method. It panics on a duplicate name or adapter type
// (a programming error, found at start-up).
func Register(m Method) {
	mu.Lock()
	defer mu.Unlock()
	name := m.Name()
	if _, dup := methods[name]; dup || name == "" {
		panic(fmt.Sprintf("method: Register of %q twice or without a name", name))
	}
	for _, t := range m.AdapterTypes() {
		if _, dup := byType[t]; dup {
			panic(fmt.Sprintf("method: adapter type %q registered twice", t))
		}
	}
	methods[name] = m
	for _, t := range m.AdapterTypes() {
		byType[t] = m
	}
}

// All returns every registered method, sorted by name.
func All() []Method {
	mu.RLock()
	defer mu.RUnlock()
	out := make([]Method, 0, len(methods))
	for _, m := range methods {
		out = append(out, m)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name() < out[j].Name() })
	return out
}

// Names returns the registered method names, sorted.
func Names() []string {
	var out []string
	for _, m := range All() {
		out = append(out, m.Name())
	}
	return out
}

// Get returns the method called name (case-insensitive).
func Get(name string) (Method, error) {
	mu.RLock()
	m, ok := methods[strings.ToLower(name)]
	mu.RUnlock()
	if !ok {
		return nil, fmt.Errorf("%w %q (want one of %s)", ErrUnknownMethod, name, strings.Join(Names(), ", "))
	}
	return m, nil
}

// ForAdapterType returns the method that reads files of adapter.type typ.
func ForAdapterType(typ string) (Method, error) {
	mu.RLock()
	m, ok := byType[typ]
	mu.RUnlock()
	if !ok {
		var known []string
		for _, m := range All() {
			known = append(known, m.AdapterTypes()...)
		}
		sort.Strings(known)
		return nil, fmt.Errorf("%w %q (ggtune reads %s)", ErrUnknownAdapter, typ, strings.Join(known, ", "))
	}
	return m, nil
}

// AdapterType returns the adapter.type of the adapter file at path.
func AdapterType(path string) (string, error) {
	f, err := binding.OpenGGUF(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	if s, _ := f.String("general.type"); s != "adapter" {
		return "", fmt.Errorf("%s: %w: general.type is %q, want \"adapter\"", path, ErrNotAdapter, s)
	}
	typ, _ := f.String("adapter.type")
	return typ, nil
}

// Open loads the adapter file at path with the method that reads its
// adapter.type, and returns the instance and its method. An adapter
// holding a NaN or infinite value is refused (model.ErrNonFinite) for
// every method.
func Open(path string, env *Env) (Instance, Method, error) {
	typ, err := AdapterType(path)
	if err != nil {
		return nil, nil, err
	}
	if err := model.CheckFinite(path); err != nil {
		return nil, nil, fmt.Errorf("adapter %w", err)
	}
	m, err := ForAdapterType(typ)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	inst, err := m.Load(path, env)
	if err != nil {
		return nil, nil, err
	}
	return inst, m, nil
}

// NumParams returns the number of values in the groups.
func NumParams(groups []train.Group) int64 {
	var n int64
	for _, g := range groups {
		for _, p := range g.Params {
			n += p.Elements()
		}
	}
	return n
}

// SetParams marks tensors as graph parameters (once).
func SetParams(ts ...*binding.Tensor) error {
	for _, t := range ts {
		if !t.IsParam() {
			if err := t.SetParam(); err != nil {
				return err
			}
		}
	}
	return nil
}

// MetaPrefix starts the GGUF keys under which adapter files keep an
// instance's free-form metadata (Env.Meta: the base model, the data, the
// training settings).
const MetaPrefix = "ggtune.meta."

// MetaKVs returns meta as GGUF key-value pairs under MetaPrefix.
func MetaKVs(meta map[string]any) []binding.KV {
	kvs := make([]binding.KV, 0, len(meta))
	for k, v := range meta {
		kvs = append(kvs, binding.KV{Key: MetaPrefix + k, Value: v})
	}
	return kvs
}

// ReadMeta copies the metadata that MetaKVs wrote in f into meta.
func ReadMeta(f *binding.GGUFFile, meta map[string]any) {
	for _, kv := range f.KVs() {
		if k, ok := strings.CutPrefix(kv.Key, MetaPrefix); ok {
			meta[k] = kv.Value
		}
	}
}
