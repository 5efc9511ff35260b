package testenv

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"
)

// shutdownServer stops server, waiting up to timeout for requests in flight, then waits
// for its Serve call to return through serveDone and adds serveErr, which Serve set, to
// the result. name, such as "registry 127.0.0.1:5000", labels the errors.
func shutdownServer(server *http.Server, timeout time.Duration, serveDone <-chan struct{}, serveErr *error, name string) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()

	err := server.Shutdown(ctx)
	if err != nil {
		err = errors.Join(fmt.Errorf("shut down %s: %w", name, err), server.Close())
	}

	<-serveDone
	if *serveErr != nil {
		err = errors.Join(err, fmt.Errorf("serve %s: %w", name, *serveErr))
	}
	return err
}
