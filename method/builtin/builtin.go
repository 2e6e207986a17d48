// Package builtin registers ggtune's methods with package method: import
// it for its side effect. Adding a method is a new package plus one import
// line here.
package builtin

import (
	_ "github.com/ggtune/ggtune/bottleneck" // bottleneck
	_ "github.com/ggtune/ggtune/full"       // full, head
	_ "github.com/ggtune/ggtune/ia3"        // ia3
	_ "github.com/ggtune/ggtune/lntune"     // lntune
	_ "github.com/ggtune/ggtune/lora"       // lora, dora
	_ "github.com/ggtune/ggtune/prompttune" // prompt, prefix, ptuning
)
