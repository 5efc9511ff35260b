package commands

import (
	"context"
	"errors"
	"io/fs"
	"net"
	"net/url"

	"github.com/regclient/regclient/types/errs"

	"github.com/imgxfer/imgxfer/routing"
)

// Exit codes. They are part of imgxfer's interface: scripts branch on them, and docker
// passes a plugin's exit code through unchanged. Keep the values stable.
const (
	ExitOK          = 0
	ExitFailure     = 1 // any failure not listed below
	ExitUsage       = 2 // invalid command line, reference or rules file
	ExitPartial     = 3 // some copies of a batch failed
	ExitAuth        = 4 // a registry rejected the credentials or the request
	ExitNotFound    = 5 // the source image or tag, or an OCI layout directory, does not exist
	ExitNetwork     = 6 // a registry or proxy could not be reached, or the proxy rejected the route
	ExitInterrupted = 130
)

// ExitCode maps an error returned by App.Run to the process exit code.
func ExitCode(err error) int {
	var urlErr *url.Error
	var netErr net.Error
	var coded interface{ ExitCode() int }
	switch {
	case err == nil:
		return ExitOK
	case errors.As(err, &coded):
		return coded.ExitCode()
	case errors.Is(err, context.Canceled):
		return ExitInterrupted
	case errors.Is(err, ErrUsage), errors.Is(err, routing.ErrInvalidRules):
		return ExitUsage
	case errors.Is(err, routing.ErrProxyRejected):
		return ExitNetwork
	case errors.Is(err, errs.ErrHTTPUnauthorized):
		return ExitAuth
	case errors.Is(err, errs.ErrNotFound), errors.Is(err, fs.ErrNotExist):
		return ExitNotFound
	case errors.As(err, &urlErr), errors.As(err, &netErr):
		return ExitNetwork
	}
	return ExitFailure
}
