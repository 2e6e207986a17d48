module github.com/ggtune/ggtune

go 1.26.8

require github.com/ollama/ollama v0.17.4

require (
	github.com/stretchr/testify v1.12.1
	go.yaml.in/yaml/v3 v3.0.5 // indirect
)
