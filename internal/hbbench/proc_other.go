//go:build !linux

package hbbench

import (
	"errors"
	"syscall"
	"time"
)

func procCPU(int) (time.Duration, error) {
	return 0, errors.New("hbbench: reading a process's CPU time needs Linux's /proc")
}

func procRSS(int) int64 { return 0 }

func selfCPU() time.Duration { return 0 }

func childAttrs() *syscall.SysProcAttr { return nil }

func machineBusy() time.Duration { return 0 }
