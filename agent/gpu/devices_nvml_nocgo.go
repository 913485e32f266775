//go:build !cgo

package gpu

import "errors"

// errNoCgo explains why NVML is unavailable in this build: go-nvml is a cgo
// package, so a CGO_ENABLED=0 binary cannot reach the driver at all.
var errNoCgo = errors.New("gpu: NVML unavailable: this binary was built without cgo (rebuild with CGO_ENABLED=1 to use real GPUs)")

// NewNVML always fails in a build without cgo.
func NewNVML() (Devices, error) { return nil, errNoCgo }
