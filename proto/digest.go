package proto

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"strings"
)

// Digest names a blob by its content: "sha256:" followed by 64 lowercase hex
// digits. A model name maps to exactly one Digest.
type Digest string

const digestPrefix = "sha256:"

// ParseDigest checks s is a well-formed sha256 digest and returns it.
func ParseDigest(s string) (Digest, error) {
	hexPart, ok := strings.CutPrefix(s, digestPrefix)
	if !ok {
		return "", fmt.Errorf("proto: digest %q must start with %q", s, digestPrefix)
	}
	if len(hexPart) != 64 {
		return "", fmt.Errorf("proto: digest %q must have 64 hex digits after %q", s, digestPrefix)
	}
	for _, c := range hexPart {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return "", fmt.Errorf("proto: digest %q must be lowercase hex", s)
		}
	}
	return Digest(s), nil
}

// DigestFromSum formats a raw sha256 sum as a Digest.
func DigestFromSum(sum []byte) Digest {
	return Digest(digestPrefix + hex.EncodeToString(sum))
}

// Hex returns the 64 hex digits without the algorithm prefix.
func (d Digest) Hex() string { return strings.TrimPrefix(string(d), digestPrefix) }

// Short returns the first 12 hex digits, for logs and tables.
func (d Digest) Short() string {
	h := d.Hex()
	if len(h) > 12 {
		return h[:12]
	}
	return h
}

// Validate reports whether d is well formed.
func (d Digest) Validate() error {
	_, err := ParseDigest(string(d))
	return err
}

// DigestOf reads r to the end and returns its length and digest.
func DigestOf(r io.Reader) (int64, Digest, error) {
	h := sha256.New()
	n, err := io.Copy(h, r)
	if err != nil {
		return n, "", err
	}
	return n, DigestFromSum(h.Sum(nil)), nil
}
