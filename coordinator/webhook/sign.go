package webhook

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Standard Webhooks header names.
const (
	HeaderID        = "webhook-id"
	HeaderTimestamp = "webhook-timestamp"
	HeaderSignature = "webhook-signature"
)

// DefaultTolerance is how far a message's timestamp may be from the
// receiver's clock; it is what Verify uses for a tolerance of zero or less,
// and what the specification suggests.
const DefaultTolerance = 5 * time.Minute

const (
	secretPrefix   = "whsec_"
	minSecretBytes = 24
	redacted       = secretPrefix + "<redacted>"
)

// Secret is a signing key: the bytes behind "whsec_<base64>". Its String,
// GoString, LogValue and MarshalText hide the key, so a Secret that ends up
// in a log line or a JSON dump reveals nothing.
type Secret []byte

func (Secret) String() string               { return redacted }
func (Secret) GoString() string             { return redacted }
func (Secret) LogValue() slog.Value         { return slog.StringValue(redacted) }
func (Secret) MarshalText() ([]byte, error) { return []byte(redacted), nil }

// ParseSecret parses "whsec_" followed by standard base64 of at least 24
// bytes. Surrounding white space (a trailing newline in a secret file) is
// ignored. Errors never quote the secret.
func ParseSecret(s string) (Secret, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, errors.New(`webhook secret is empty; use "whsec_" followed by base64 of at least 24 random bytes`)
	}
	b64, ok := strings.CutPrefix(s, secretPrefix)
	if !ok {
		return nil, errors.New(`webhook secret must start with "whsec_", followed by base64 of at least 24 random bytes`)
	}
	key, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		return nil, fmt.Errorf(`webhook secret is not valid standard base64 after "whsec_": %v`, err)
	}
	if len(key) < minSecretBytes {
		return nil, fmt.Errorf("webhook secret holds %d bytes; use at least %d (32 recommended)", len(key), minSecretBytes)
	}
	return Secret(key), nil
}

// NewSecret returns a fresh secret of 32 random bytes in "whsec_" form.
func NewSecret() (string, error) {
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return "", fmt.Errorf("webhook: generate a secret: %w", err)
	}
	return secretPrefix + base64.StdEncoding.EncodeToString(key), nil
}

// Sign returns the webhook-signature value for one message: "v1," and the
// base64 HMAC-SHA256 of "msgID.unixSeconds.body".
func Sign(secret Secret, msgID string, ts time.Time, body []byte) string {
	return "v1," + base64.StdEncoding.EncodeToString(mac(secret, msgID, ts.Unix(), body))
}

func mac(secret Secret, msgID string, unix int64, body []byte) []byte {
	h := hmac.New(sha256.New, secret)
	h.Write([]byte(msgID))
	h.Write([]byte{'.'})
	h.Write(strconv.AppendInt(nil, unix, 10))
	h.Write([]byte{'.'})
	h.Write(body)
	return h.Sum(nil)
}

// Verification errors, for errors.Is; Verify wraps them with detail.
var (
	ErrMissingHeaders = errors.New("webhook: missing signature headers")
	ErrTimestamp      = errors.New("webhook: timestamp outside the tolerance")
	ErrSignature      = errors.New("webhook: no matching signature")
)

// Verify checks a received message against secret. It refuses a message
// whose timestamp is more than tolerance from now (DefaultTolerance if
// tolerance <= 0), so a captured message cannot be replayed later. The
// signature header may list several space-separated "v1,<sig>" entries,
// as a sender rotating keys sends; any match passes.
func Verify(secret Secret, h http.Header, body []byte, now time.Time, tolerance time.Duration) error {
	id, tsv, sigs := h.Get(HeaderID), h.Get(HeaderTimestamp), h.Get(HeaderSignature)
	var missing []string
	for _, kv := range [][2]string{{HeaderID, id}, {HeaderTimestamp, tsv}, {HeaderSignature, sigs}} {
		if kv[1] == "" {
			missing = append(missing, kv[0])
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("%w: %s", ErrMissingHeaders, strings.Join(missing, ", "))
	}
	unix, err := strconv.ParseInt(tsv, 10, 64)
	if err != nil {
		return fmt.Errorf("%w: %q is not Unix seconds", ErrTimestamp, tsv)
	}
	if tolerance <= 0 {
		tolerance = DefaultTolerance
	}
	if d := now.Sub(time.Unix(unix, 0)); d > tolerance || d < -tolerance {
		return fmt.Errorf("%w: %s off the receiver's clock, more than %s", ErrTimestamp, d.Round(time.Second), tolerance)
	}
	want := mac(secret, id, unix, body)
	for _, s := range strings.Fields(sigs) {
		b64, ok := strings.CutPrefix(s, "v1,")
		if !ok {
			continue // another scheme (v1a, …) we cannot check
		}
		got, err := base64.StdEncoding.DecodeString(b64)
		if err == nil && hmac.Equal(got, want) {
			return nil
		}
	}
	return ErrSignature
}
