package batch

import (
	"fmt"
	"maps"

	"github.com/goccy/go-yaml"

	"github.com/imgxfer/imgxfer/internal/registry"
	"github.com/imgxfer/imgxfer/routing"
)

// FileVersion is the version of imgxfer's batch format that this package reads.
const FileVersion = 1

// imgxferFile is imgxfer's own batch format.
type imgxferFile struct {
	Version  int          `yaml:"version"`
	Defaults copySettings `yaml:"defaults"`
	Copies   []copyEntry  `yaml:"copies"`
}

// copySettings apply to every copy when given under defaults, and to one copy when given
// in it. A copy's own value replaces the default, except annotations, which merge.
type copySettings struct {
	DestinationPrefix string            `yaml:"destination_prefix"`
	Platforms         []string          `yaml:"platforms"`
	Annotations       map[string]string `yaml:"annotations"`
	Proxy             string            `yaml:"proxy"`
}

type copyEntry struct {
	Source      string   `yaml:"source"`
	Destination string   `yaml:"destination"`
	Tags        []string `yaml:"tags"`
	TagPatterns []string `yaml:"tag_patterns"`
	AllTags     bool     `yaml:"all_tags"`

	Settings copySettings `yaml:",inline"`
}

func parseImgxfer(name string, data []byte) (*Batch, error) {
	var file imgxferFile
	if err := yaml.UnmarshalWithOptions(data, &file, yaml.DisallowUnknownField()); err != nil {
		return nil, decodeError(name, err)
	}
	loc := locator{name: name, data: data}
	if file.Version > FileVersion {
		return nil, loc.errorf("$.version", "version %d is newer than this imgxfer reads (%d); upgrade imgxfer", file.Version, FileVersion)
	}
	if file.Version < 0 {
		return nil, loc.errorf("$.version", "invalid version %d; use %d", file.Version, FileVersion)
	}
	if err := checkSettings(loc, "$.defaults", file.Defaults); err != nil {
		return nil, err
	}

	b := &Batch{}
	for i, c := range file.Copies {
		path := fmt.Sprintf("$.copies[%d]", i)
		settings := merge(file.Defaults, c.Settings)
		if err := checkSettings(loc, path, c.Settings); err != nil {
			return nil, err
		}
		entry, err := buildEntry(loc, path, c, settings)
		if err != nil {
			return nil, err
		}
		b.Entries = append(b.Entries, entry)
	}
	return b, nil
}

func merge(defaults, own copySettings) copySettings {
	merged := defaults
	if own.DestinationPrefix != "" {
		merged.DestinationPrefix = own.DestinationPrefix
	}
	if len(own.Platforms) > 0 {
		merged.Platforms = own.Platforms
	}
	if own.Proxy != "" {
		merged.Proxy = own.Proxy
	}
	if len(defaults.Annotations)+len(own.Annotations) > 0 {
		merged.Annotations = map[string]string{}
		maps.Copy(merged.Annotations, defaults.Annotations)
		maps.Copy(merged.Annotations, own.Annotations)
	}
	return merged
}

func checkSettings(loc locator, path string, s copySettings) error {
	if s.DestinationPrefix != "" {
		if err := checkPrefix(s.DestinationPrefix); err != nil {
			return loc.errorf(path+".destination_prefix", "%v", err)
		}
	}
	for i, p := range s.Platforms {
		if err := registry.CheckPlatforms([]string{p}); err != nil {
			return loc.errorf(fmt.Sprintf("%s.platforms[%d]", path, i), "%v", err)
		}
	}
	if err := registry.CheckAnnotations(s.Annotations); err != nil {
		return loc.errorf(path+".annotations", "%v", err)
	}
	if s.Proxy != "" {
		if _, err := routing.Empty().WithProxy("registry.example.com", normalizeProxy(s.Proxy)); err != nil {
			return loc.errorf(path+".proxy", "invalid proxy %q: use a URL such as http://mesh-proxy.example.com:31080", s.Proxy)
		}
	}
	return nil
}

// buildEntry checks one copy and resolves its destination.
func buildEntry(loc locator, path string, c copyEntry, settings copySettings) (Entry, error) {
	if c.Source == "" {
		return Entry{}, loc.errorf(path, "source is missing; give the image to copy, such as registry.dev.example.com/team/app:1.4")
	}
	src, err := parseImage(c.Source)
	if err != nil {
		return Entry{}, loc.errorf(path+".source", "%v", err)
	}

	var dst imageName
	switch {
	case c.Destination != "" && c.Settings.DestinationPrefix != "":
		return Entry{}, loc.errorf(path, "destination and destination_prefix exclude each other; keep one")
	case c.Destination != "":
		dst, err = parseImage(c.Destination)
		if err != nil {
			return Entry{}, loc.errorf(path+".destination", "%v", err)
		}
	case settings.DestinationPrefix != "":
		dst, err = prefixed(settings.DestinationPrefix, src)
		if err != nil {
			return Entry{}, loc.errorf(path+".source", "%v", err)
		}
	default:
		return Entry{}, loc.errorf(path, "destination is missing; give destination, or destination_prefix here or under defaults")
	}

	entry := Entry{Proxy: normalizeProxy(settings.Proxy)}
	entry.Origin = loc.origin(path)
	entry.Platforms = settings.Platforms
	entry.Annotations = settings.Annotations
	entry.AllTags = c.AllTags
	for i, tag := range c.Tags {
		if err := checkTag(tag); err != nil {
			return Entry{}, loc.errorf(fmt.Sprintf("%s.tags[%d]", path, i), "%v", err)
		}
		entry.Tags = append(entry.Tags, tag)
	}
	for i, pattern := range c.TagPatterns {
		re, err := compilePattern(pattern)
		if err != nil {
			return Entry{}, loc.errorf(fmt.Sprintf("%s.tag_patterns[%d]", path, i), "%v", err)
		}
		entry.TagPatterns = append(entry.TagPatterns, re)
	}

	if !entry.SyncEntry.AllTags && len(entry.Tags) == 0 && len(entry.TagPatterns) == 0 {
		entry.Source = src.ref.CommonName()
		entry.Destination = destinationFor(src, dst)
		return entry, nil
	}
	if src.hasTag || src.hasDigest {
		return Entry{}, loc.errorf(path+".source", "%q names a tag or digest, but tags, tag_patterns or all_tags select tags; give the repository alone", c.Source)
	}
	if dst.hasTag || dst.hasDigest {
		return Entry{}, loc.errorf(path+".destination", "%q names a tag or digest, but each selected tag is copied under its own name; give the repository alone", c.Destination)
	}
	entry.Source = src.repository()
	entry.Destination = dst.repository()
	return entry, nil
}
