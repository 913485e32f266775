package webhook

import (
	"strings"
	"testing"
)

func TestValidateURL(t *testing.T) {
	allow := []string{"hooks.example.com", "*.corp.example", "[::1]"}
	cases := []struct {
		name  string
		url   string
		allow []string
		want  string // "" for accepted, else part of the error
	}{
		{"https", "https://hooks.example.com/x?job=1", nil, ""},
		{"http with port", "http://127.0.0.1:8080/x", nil, ""},
		{"ipv6", "http://[::1]:8080/x", nil, ""},
		{"empty", "", nil, "empty"},
		{"bad scheme", "ftp://hooks.example.com/x", nil, `scheme "ftp" is not allowed; use http or https`},
		{"javascript", "javascript:alert(1)", nil, `scheme "javascript"`},
		{"relative", "/hooks/x", nil, "not absolute"},
		{"no scheme", "hooks.example.com/x", nil, "not absolute"},
		{"words", "not a url", nil, "not absolute"},
		{"no host", "https:///x", nil, "no host"},
		{"port only", "https://:443/x", nil, "no host"},
		{"opaque", "https:hooks.example.com", nil, "no host"},
		{"userinfo", "https://user:pw@hooks.example.com/", nil, "user name or password"},
		{"user only", "https://user@hooks.example.com/", nil, "user name or password"},
		{"fragment", "https://hooks.example.com/#frag", nil, "#fragment"},
		{"empty fragment", "https://hooks.example.com/#", nil, "#fragment"},
		{"control character", "https://hooks.example.com/\x7f", nil, "does not parse"},
		{"too long", "https://hooks.example.com/" + strings.Repeat("a", 2048), nil, "2048"},
		{"at the limit", "https://hooks.example.com/" + strings.Repeat("a", 2048-len("https://hooks.example.com/")), nil, ""},

		{"allowlist exact", "https://hooks.example.com/x", allow, ""},
		{"allowlist case", "https://HOOKS.Example.com/x", allow, ""},
		{"allowlist trailing dot", "https://hooks.example.com./x", allow, ""},
		{"allowlist port ignored", "https://hooks.example.com:8443/x", allow, ""},
		{"allowlist wildcard", "https://a.corp.example/x", allow, ""},
		{"allowlist wildcard deep", "https://a.b.CORP.example/x", allow, ""},
		{"allowlist wildcard apex", "https://corp.example/x", allow, "not allowed by this coordinator"},
		{"allowlist wildcard lookalike", "https://evilcorp.example/x", allow, "not allowed"},
		{"allowlist exact is not a wildcard", "https://a.hooks.example.com/x", allow, "not allowed"},
		{"allowlist suffix trick", "https://hooks.example.com.evil.net/x", allow, "not allowed"},
		{"allowlist other", "https://evil.example.com/x", allow, "hooks.example.com, *.corp.example"},
		{"allowlist ipv6", "http://[::1]:9/x", allow, ""},
		{"allowlist entry case", "https://hooks.example.com/x", []string{"Hooks.EXAMPLE.com"}, ""},
		{"allowlist still checks scheme", "ftp://hooks.example.com/x", allow, "scheme"},
	}
	for _, c := range cases {
		err := ValidateURL(c.url, c.allow)
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%s: ValidateURL(%q) = %v, want accepted", c.name, c.url, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%s: ValidateURL(%q) = %v, want an error saying %q", c.name, c.url, err, c.want)
		}
	}
}

// TestValidateURLDoesNotEchoCredentials: the error becomes an HTTP answer
// and may be logged, so a token in the URL must not be in it.
func TestValidateURLDoesNotEchoCredentials(t *testing.T) {
	for _, u := range []string{"https://user:s3cret@hooks.example.com/", "ftp://user:s3cret@hooks.example.com/", "https://hooks.example.com/s3cret#x", "https://hooks.example.com/s3cret\x00"} {
		if err := ValidateURL(u, nil); err == nil || strings.Contains(err.Error(), "s3cret") {
			t.Errorf("ValidateURL(%q) = %v", u, err)
		}
	}
}
