package allocs_test

import (
	"testing"

	"github.com/mailbus/mailbus/pkg/testkit/allocs"
)

var sink []byte

func TestBytes_countsWhatTheFunctionAllocates(t *testing.T) {
	got := allocs.Bytes(func() { sink = make([]byte, 1<<20) })
	if got < 1<<20 || got > 1<<20+64<<10 {
		t.Errorf("Bytes of a 1 MiB allocation = %d", got)
	}
}
