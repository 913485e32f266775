//go:build !cgo

package gpu

import (
	"strings"
	"testing"
)

func TestNewNVMLWithoutCgo(t *testing.T) {
	if _, err := NewNVML(); err == nil || !strings.Contains(err.Error(), "without cgo") {
		t.Fatalf("NewNVML() = %v, want an error saying the build has no cgo", err)
	}
}
