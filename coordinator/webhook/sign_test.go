package webhook

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

var (
	testSecret  = Secret("0123456789abcdef0123456789abcdef")
	otherSecret = Secret("another secret, 24 bytes or more")
)

func headers(id string, ts time.Time, sig string) http.Header {
	h := http.Header{}
	h.Set(HeaderID, id)
	h.Set(HeaderTimestamp, strconv.FormatInt(ts.Unix(), 10))
	h.Set(HeaderSignature, sig)
	return h
}

func TestSignVerifyRoundTrip(t *testing.T) {
	now := time.Now()
	for _, body := range [][]byte{nil, []byte(`{"type":"job.succeeded","data":{"id":"j1"}}`), bytes.Repeat([]byte("x"), 1<<20)} {
		sig := Sign(testSecret, "msg_1", now, body)
		if !strings.HasPrefix(sig, "v1,") {
			t.Fatalf("signature %q does not start with v1,", sig)
		}
		if err := Verify(testSecret, headers("msg_1", now, sig), body, now, time.Minute); err != nil {
			t.Fatalf("body of %d bytes: %v", len(body), err)
		}
	}
}

// TestSignKnownAnswer recomputes the signature with crypto/hmac directly,
// and checks the Standard Webhooks specification's published test vector,
// which is what lets receivers use that specification's libraries.
func TestSignKnownAnswer(t *testing.T) {
	ts := time.Unix(1700000000, 0)
	body := []byte(`{"type":"job.succeeded"}`)
	m := hmac.New(sha256.New, []byte("0123456789abcdef0123456789abcdef"))
	m.Write([]byte("msg_1.1700000000.{\"type\":\"job.succeeded\"}"))
	want := "v1," + base64.StdEncoding.EncodeToString(m.Sum(nil))
	if got := Sign(testSecret, "msg_1", ts, body); got != want {
		t.Fatalf("Sign = %s, want %s", got, want)
	}

	key, err := ParseSecret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
	if err != nil {
		t.Fatal(err)
	}
	const vector = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
	vts, vbody := time.Unix(1614265330, 0), []byte(`{"test": 2432232314}`)
	if got := Sign(key, "msg_p5jXN8AQM9LWM0D4loKWxJek", vts, vbody); got != vector {
		t.Fatalf("spec vector: Sign = %s, want %s", got, vector)
	}
	if err := Verify(key, headers("msg_p5jXN8AQM9LWM0D4loKWxJek", vts, vector), vbody, vts.Add(10*time.Second), time.Minute); err != nil {
		t.Fatalf("spec vector: %v", err)
	}
}

func TestVerifyRefuses(t *testing.T) {
	now := time.Now()
	body := []byte(`{"a":1}`)
	good := Sign(testSecret, "msg_1", now, body)
	without := func(name string) http.Header {
		h := headers("msg_1", now, good)
		h.Del(name)
		return h
	}
	stale, future := now.Add(-time.Hour), now.Add(time.Hour)
	badTS := headers("msg_1", now, good)
	badTS.Set(HeaderTimestamp, "yesterday")
	cases := []struct {
		name string
		h    http.Header
		body []byte
		want error
	}{
		{"tampered body", headers("msg_1", now, good), []byte(`{"a":2}`), ErrSignature},
		{"wrong secret", headers("msg_1", now, Sign(otherSecret, "msg_1", now, body)), body, ErrSignature},
		{"other id", headers("msg_2", now, good), body, ErrSignature},
		{"stale timestamp, validly signed", headers("msg_1", stale, Sign(testSecret, "msg_1", stale, body)), body, ErrTimestamp},
		{"future timestamp, validly signed", headers("msg_1", future, Sign(testSecret, "msg_1", future, body)), body, ErrTimestamp},
		{"timestamp changed after signing", headers("msg_1", now.Add(-30*time.Second), good), body, ErrSignature},
		{"timestamp not a number", badTS, body, ErrTimestamp},
		{"unknown version", headers("msg_1", now, "v2,"+strings.TrimPrefix(good, "v1,")), body, ErrSignature},
		{"not base64", headers("msg_1", now, "v1,!!!"), body, ErrSignature},
		{"bare signature", headers("msg_1", now, strings.TrimPrefix(good, "v1,")), body, ErrSignature},
		{"no headers", http.Header{}, body, ErrMissingHeaders},
		{"no id", without(HeaderID), body, ErrMissingHeaders},
		{"no timestamp", without(HeaderTimestamp), body, ErrMissingHeaders},
		{"no signature", without(HeaderSignature), body, ErrMissingHeaders},
	}
	for _, c := range cases {
		if err := Verify(testSecret, c.h, c.body, now, time.Minute); !errors.Is(err, c.want) {
			t.Errorf("%s: Verify = %v, want %v", c.name, err, c.want)
		}
	}
}

func TestVerifyToleranceDefault(t *testing.T) {
	now := time.Now()
	ts := now.Add(-2 * time.Minute)
	h := headers("m", ts, Sign(testSecret, "m", ts, nil))
	if err := Verify(testSecret, h, nil, now, 0); err != nil {
		t.Fatalf("2 min old with the default tolerance: %v", err)
	}
	if err := Verify(testSecret, h, nil, now, time.Minute); !errors.Is(err, ErrTimestamp) {
		t.Fatalf("2 min old with 1 min tolerance: %v", err)
	}
}

// TestVerifyMultipleSignatures: during key rotation the header carries a
// signature per key, and a receiver holding either key accepts.
func TestVerifyMultipleSignatures(t *testing.T) {
	now := time.Now()
	body := []byte(`{}`)
	oldSig, newSig := Sign(otherSecret, "m", now, body), Sign(testSecret, "m", now, body)
	for _, header := range []string{
		oldSig + " " + newSig,
		newSig + " " + oldSig,
		"v1a,c29tZXRoaW5n " + oldSig + "  " + newSig + " junk",
	} {
		for _, key := range []Secret{testSecret, otherSecret} {
			if err := Verify(key, headers("m", now, header), body, now, time.Minute); err != nil {
				t.Errorf("header %q: %v", header, err)
			}
		}
		if err := Verify(Secret("a third key, not in the header"), headers("m", now, header), body, now, time.Minute); !errors.Is(err, ErrSignature) {
			t.Errorf("header %q with a key it was not signed with: %v", header, err)
		}
	}
}

func TestParseSecret(t *testing.T) {
	s, err := NewSecret()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(s, "whsec_") {
		t.Fatalf("NewSecret = %q, want whsec_ prefix", s)
	}
	k, err := ParseSecret(s + "\n")
	if err != nil || len(k) != 32 {
		t.Fatalf("round trip: %v, %d bytes", err, len(k))
	}
	if s2, _ := NewSecret(); s2 == s {
		t.Fatal("two NewSecret calls gave the same secret")
	}
	short := "whsec_" + base64.StdEncoding.EncodeToString(make([]byte, 23))
	if _, err := ParseSecret("whsec_" + base64.StdEncoding.EncodeToString(make([]byte, 24))); err != nil {
		t.Fatalf("24 bytes: %v", err)
	}
	for _, c := range []struct{ in, want string }{
		{"", "empty"},
		{"   ", "empty"},
		{base64.StdEncoding.EncodeToString(make([]byte, 32)), `start with "whsec_"`},
		{"WHSEC_" + base64.StdEncoding.EncodeToString(make([]byte, 32)), `start with "whsec_"`},
		{"whsec_not*base64", "base64"},
		{"whsec_" + base64.RawURLEncoding.EncodeToString(make([]byte, 32)) + "-", "base64"},
		{short, "23 bytes"},
	} {
		_, err := ParseSecret(c.in)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("ParseSecret(%q) = %v, want an error saying %q", c.in, err, c.want)
		}
	}
}

// TestSecretDoesNotLeak: however a Secret is printed or logged, the key
// does not appear.
func TestSecretDoesNotLeak(t *testing.T) {
	key := Secret("the-key-material-must-not-leak")
	var logged bytes.Buffer
	slog.New(slog.NewTextHandler(&logged, nil)).Info("x", "secret", key)
	slog.New(slog.NewJSONHandler(&logged, nil)).Info("x", "secret", key)
	js, err := json.Marshal(struct{ S Secret }{key})
	if err != nil {
		t.Fatal(err)
	}
	for _, out := range []string{
		key.String(),
		fmt.Sprint(key), fmt.Sprintf("%s %v %+v %#v %q %x", key, key, key, key, key, key),
		fmt.Sprintf("%+v", Sender{Secret: key}),
		logged.String(),
		string(js),
	} {
		if strings.Contains(out, "key-material") || strings.Contains(out, base64.StdEncoding.EncodeToString(key)) ||
			strings.Contains(out, fmt.Sprintf("%x", []byte(key))) {
			t.Errorf("the key leaks: %s", out)
		}
	}
	if key.String() != "whsec_<redacted>" {
		t.Errorf("String = %q", key.String())
	}
}
