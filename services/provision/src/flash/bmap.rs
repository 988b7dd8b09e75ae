//! The few fields of a bmap file (bmap-tools' XML block map) the flasher
//! needs: image size, block size and the mapped ranges with their checksums,
//! to verify what `bmaptool copy` wrote by reading it back.
//!
//! The format is flat and machine-written (`bmaptool create`), so a small
//! tag scanner reads it; an unexpected layout is an error, never a guess.

use std::fmt;

/// A parsed bmap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bmap {
    /// `ImageSize`, bytes.
    pub image_size: u64,
    /// `BlockSize`, bytes.
    pub block_size: u64,
    /// `ChecksumType` (`sha256` for bmap 2.0; `sha1` in 1.x files).
    pub checksum_type: String,
    /// Mapped block ranges, inclusive, in blocks.
    pub ranges: Vec<Range>,
}

/// One `<Range chksum="...">first-last</Range>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    /// First block.
    pub first: u64,
    /// Last block (inclusive).
    pub last: u64,
    /// Hex checksum of the range's bytes, when present.
    pub checksum: Option<String>,
}

/// Why a bmap could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BmapError(pub String);

impl fmt::Display for BmapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn tag<'a>(xml: &'a str, name: &str) -> Option<&'a str> {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    let start = xml.find(&open)? + open.len();
    let len = xml.get(start..)?.find(&close)?;
    xml.get(start..start + len).map(str::trim)
}

fn number(xml: &str, name: &str) -> Result<u64, BmapError> {
    let text = tag(xml, name).ok_or_else(|| BmapError(format!("no <{name}>")))?;
    text.parse()
        .map_err(|_| BmapError(format!("<{name}> is not a number: {text:?}")))
}

impl Bmap {
    /// Parse bmap XML.
    pub fn parse(xml: &str) -> Result<Self, BmapError> {
        let image_size = number(xml, "ImageSize")?;
        let block_size = number(xml, "BlockSize")?;
        if block_size == 0 {
            return Err(BmapError("<BlockSize> is 0".into()));
        }
        let checksum_type = tag(xml, "ChecksumType").unwrap_or_default().to_string();
        let map = tag(xml, "BlockMap").ok_or_else(|| BmapError("no <BlockMap>".into()))?;
        let mut ranges = Vec::new();
        for piece in map.split("<Range").skip(1) {
            let (attrs, rest) = piece
                .split_once('>')
                .ok_or_else(|| BmapError("unterminated <Range".into()))?;
            let body = rest
                .split_once("</Range>")
                .map(|(b, _)| b.trim())
                .ok_or_else(|| BmapError("<Range> without </Range>".into()))?;
            let checksum = attrs
                .split_once("chksum=\"")
                .and_then(|(_, v)| v.split_once('"'))
                .map(|(v, _)| v.to_string());
            let (first, last) = match body.split_once('-') {
                Some((a, b)) => (a.trim(), b.trim()),
                None => (body, body),
            };
            let parse = |s: &str| {
                s.parse::<u64>()
                    .map_err(|_| BmapError(format!("bad range {body:?}")))
            };
            let (first, last) = (parse(first)?, parse(last)?);
            if last < first {
                return Err(BmapError(format!("bad range {body:?}")));
            }
            ranges.push(Range {
                first,
                last,
                checksum,
            });
        }
        Ok(Self {
            image_size,
            block_size,
            checksum_type,
            ranges,
        })
    }

    /// Byte offset and length of a range, clipped to the image size.
    pub fn span(&self, r: &Range) -> (u64, u64) {
        let start = r.first.saturating_mul(self.block_size);
        let end = (r.last.saturating_add(1))
            .saturating_mul(self.block_size)
            .min(self.image_size);
        (start, end.saturating_sub(start))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"<?xml version="1.0" ?>
<bmap version="2.0">
    <ImageSize> 10485760 </ImageSize>
    <BlockSize> 4096 </BlockSize>
    <BlocksCount> 2560 </BlocksCount>
    <MappedBlocksCount> 3 </MappedBlocksCount>
    <ChecksumType> sha256 </ChecksumType>
    <BmapFileChecksum> 00 </BmapFileChecksum>
    <BlockMap>
        <Range chksum="aa11"> 0-1 </Range>
        <Range chksum="bb22"> 2559 </Range>
    </BlockMap>
</bmap>
"#;

    #[test]
    fn parses_bmap_tools_output() {
        let b = Bmap::parse(SAMPLE).map_err(|e| e.0);
        assert_eq!(
            b,
            Ok(Bmap {
                image_size: 10_485_760,
                block_size: 4096,
                checksum_type: "sha256".into(),
                ranges: vec![
                    Range {
                        first: 0,
                        last: 1,
                        checksum: Some("aa11".into())
                    },
                    Range {
                        first: 2559,
                        last: 2559,
                        checksum: Some("bb22".into())
                    },
                ],
            })
        );
        let Ok(b) = Bmap::parse(SAMPLE) else { return };
        assert_eq!(b.span(&b.ranges[0]), (0, 8192));
        assert_eq!(b.span(&b.ranges[1]), (2559 * 4096, 4096));
    }

    #[test]
    fn rejects_what_it_does_not_understand() {
        assert!(Bmap::parse("<bmap></bmap>").is_err());
        assert!(Bmap::parse(&SAMPLE.replace("10485760", "ten")).is_err());
        assert!(Bmap::parse(&SAMPLE.replace(" 0-1 ", " 5-1 ")).is_err());
        assert!(Bmap::parse(&SAMPLE.replace("</BlockMap>", "")).is_err());
    }
}
