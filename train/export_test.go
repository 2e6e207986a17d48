package train

// SetChunkElems sets the chunk budget of the loss for a test and returns a
// function that restores it.
func SetChunkElems(n int64) (restore func()) {
	old := chunkElems
	chunkElems = n
	return func() { chunkElems = old }
}

// LossChunks returns the number of chunks of the training loss.
func LossChunks(e *Engine) int { return e.trainIn.chunks }
