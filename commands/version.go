package commands

import (
	"encoding/json"
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/imgxfer/imgxfer/internal/version"
)

func (a *App) versionCommand() *cli.Command {
	return &cli.Command{
		Name:  "version",
		Usage: "print the version, commit and build date",
		Flags: []cli.Flag{
			&cli.StringFlag{
				Name:  flagFormat,
				Usage: "output format: text or json",
				Value: formatText,
			},
		},
		Action: func(c *cli.Context) error {
			if err := exactArgs(c); err != nil {
				return err
			}
			return a.runVersion(c.String(flagFormat))
		},
	}
}

func (a *App) runVersion(format string) error {
	info := version.Get()
	switch format {
	case formatJSON:
		return json.NewEncoder(a.stdout).Encode(info)
	case formatText:
		_, err := fmt.Fprintf(a.stdout, "imgxfer %s\ncommit:   %s\nbuilt:    %s\ngo:       %s\nplatform: %s\n",
			info.Version, info.Commit, info.Date, info.GoVersion, info.Platform)
		return err
	}
	return usageErrorf("invalid --%s %q; use %s or %s", flagFormat, format, formatText, formatJSON)
}
