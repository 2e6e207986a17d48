package main

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"go.yaml.in/yaml/v3"
)

// errConfigFile reports a --config file that cannot be applied.
var errConfigFile = errors.New("invalid config file")

// applyConfig sets cmd's flags from the YAML file path: a mapping whose keys
// are flag names (long form, '-' or '_' between words) and whose values are
// what the flag would be given on the command line (a list for repeatable
// or comma-separated flags). Flags given explicitly on the command line keep
// their values. An unknown key is an error naming it and its line. It
// returns the names of the flags the file set.
func applyConfig(cmd *cobra.Command, path string) (map[string]bool, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return nil, fmt.Errorf("config %s: %w: %v", path, errConfigFile, err)
	}
	set := map[string]bool{}
	if len(doc.Content) == 0 {
		return set, nil
	}
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode {
		return nil, fmt.Errorf("config %s:%d: %w: want a mapping of flag names to values", path, root.Line, errConfigFile)
	}
	seen := map[string]int{}
	for i := 0; i+1 < len(root.Content); i += 2 {
		k, v := root.Content[i], root.Content[i+1]
		fail := func(format string, args ...any) error {
			return fmt.Errorf("config %s:%d: %w: key %q: %s", path, k.Line, errConfigFile, k.Value, fmt.Sprintf(format, args...))
		}
		name := strings.ReplaceAll(strings.TrimSpace(k.Value), "_", "-")
		f := cmd.Flags().Lookup(name)
		if f == nil || name == "config" || name == "help" {
			return nil, fmt.Errorf("config %s:%d: %w: unknown key %q (not a flag of %q; see --help)", path, k.Line, errConfigFile, k.Value, cmd.CommandPath())
		}
		if line, dup := seen[name]; dup {
			return nil, fail("also set on line %d", line)
		}
		seen[name] = k.Line
		vals, err := yamlValues(v)
		if err != nil {
			return nil, fail("%v", err)
		}
		if f.Changed {
			// The command line wins, but a bad value in the file is still
			// an error: check it and put the command line's value back.
			if err := checkFlag(f, vals); err != nil {
				return nil, fail("%v (the command line sets --%s, but the file's value must be valid too)", err, name)
			}
			continue
		}
		if err := setFlag(f, vals); err != nil {
			return nil, fail("%v", err)
		}
		set[name] = true
	}
	return set, nil
}

// yamlValues returns the scalar or the scalars of a list.
func yamlValues(v *yaml.Node) ([]string, error) {
	switch v.Kind {
	case yaml.ScalarNode:
		if v.Tag == "!!null" {
			return nil, fmt.Errorf("no value")
		}
		return []string{v.Value}, nil
	case yaml.SequenceNode:
		out := make([]string, 0, len(v.Content))
		for _, e := range v.Content {
			if e.Kind != yaml.ScalarNode {
				return nil, fmt.Errorf("line %d: a list may hold only plain values", e.Line)
			}
			out = append(out, e.Value)
		}
		return out, nil
	}
	return nil, fmt.Errorf("want a value or a list of values")
}

// checkFlag reports whether f accepts vals without changing its value: it
// sets them and restores the current value.
func checkFlag(f *pflag.Flag, vals []string) error {
	if sv, ok := f.Value.(pflag.SliceValue); ok {
		cur := sv.GetSlice()
		err := setFlag(f, vals)
		if rerr := sv.Replace(cur); rerr != nil {
			return fmt.Errorf("restoring --%s: %w", f.Name, rerr)
		}
		return err
	}
	cur := f.Value.String()
	err := setFlag(f, vals)
	if rerr := f.Value.Set(cur); rerr != nil {
		return fmt.Errorf("restoring --%s %q: %w", f.Name, cur, rerr)
	}
	return err
}

// setFlag gives f the values: repeatable flags take each, other flags one
// value (a list is joined with commas, as in --targets q,v).
func setFlag(f *pflag.Flag, vals []string) error {
	if sv, ok := f.Value.(pflag.SliceValue); ok {
		return sv.Replace(vals)
	}
	if f.Value.Type() == "bool" && len(vals) != 1 {
		return fmt.Errorf("want true or false")
	}
	return f.Value.Set(strings.Join(vals, ","))
}
