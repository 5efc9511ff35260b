package logging

import (
	"net/http"
	"net/url"
	"regexp"
	"strings"

	"github.com/sirupsen/logrus"
)

// Censored replaces every secret value in the log output.
const Censored = "[censored]"

// secretHeaders are HTTP headers whose values are credentials.
var secretHeaders = []string{"Authorization", "Proxy-Authorization", "Cookie", "Set-Cookie", "X-Registry-Auth"}

// secretKey matches field names and URL query keys whose values are credentials, such as
// "password", "access_token" or the signature of a pre-signed blob-storage URL.
var secretKey = regexp.MustCompile(`(?i)(authorization|passw|secret|token|credential|signature|^sig$|^x-amz-security|apikey|api_key)`)

// bearerInText matches credentials written into free text, such as an error message
// that quotes a header.
var bearerInText = regexp.MustCompile(`(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}`)

// censoringFormatter removes secrets from an entry's fields and message before the inner
// formatter writes it. It works on a copy, so the caller's entry and values stay intact.
type censoringFormatter struct {
	inner logrus.Formatter
}

func (f *censoringFormatter) Format(entry *logrus.Entry) ([]byte, error) {
	censored := entry.Dup()
	censored.Level = entry.Level
	censored.Message = censorText(entry.Message)
	for key, value := range entry.Data {
		censored.Data[key] = censorValue(key, value)
	}
	return f.inner.Format(censored)
}

func censorValue(key string, value any) any {
	if secretKey.MatchString(key) {
		return Censored
	}
	switch v := value.(type) {
	case http.Header:
		return censorHeader(v)
	case map[string][]string:
		return censorHeader(http.Header(v))
	case string:
		return censorText(v)
	case error:
		return censorText(v.Error())
	}
	return value
}

func censorHeader(h http.Header) http.Header {
	out := h.Clone()
	for key := range out {
		for _, secret := range secretHeaders {
			if strings.EqualFold(key, secret) {
				out[key] = []string{Censored}
			}
		}
	}
	return out
}

// censorText censors bearer and basic credentials in free text and secret query values
// in URLs.
func censorText(text string) string {
	text = bearerInText.ReplaceAllString(text, "$1 "+Censored)
	if strings.Contains(text, "://") {
		text = censorURLs(text)
	}
	return text
}

var urlInText = regexp.MustCompile(`https?://[^\s"'<>]+`)

func censorURLs(text string) string {
	return urlInText.ReplaceAllStringFunc(text, func(raw string) string {
		u, err := url.Parse(raw)
		if err != nil || (u.RawQuery == "" && u.User == nil) {
			return raw
		}
		query := u.Query()
		changed := false
		for key := range query {
			if secretKey.MatchString(key) {
				query[key] = []string{Censored}
				changed = true
			}
		}
		if u.User != nil {
			u.User = url.User(Censored)
			changed = true
		}
		if !changed {
			return raw
		}
		if u.RawQuery != "" {
			u.RawQuery = query.Encode()
		}
		return u.String()
	})
}
