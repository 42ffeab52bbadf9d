//! Member offsets of kernel structs, read from the running kernel's BTF.
//!
//! Rust eBPF has no CO-RE, so a program that reads kernel structs (here `struct sk_buff`,
//! `struct nf_hook_state`, `struct net_device`) gets their layout from user space at load time.
//! aya-obj parses BTF but keeps member access crate-private, so this module is a small reader of
//! the BTF format (`Documentation/bpf/btf.rst`): the header, the type section walked once to
//! index type ids, and a member lookup that descends into anonymous structs and unions (the
//! kernel groups many `sk_buff` fields that way).

use std::{borrow::Cow, path::Path};

/// Where the kernel exposes its own BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

const BTF_MAGIC: u16 = 0xeb9f;

// Kinds (`BTF_KIND_*`).
const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

/// How deep `member` descends into nested anonymous structs/unions (and type chains).
const MAX_DEPTH: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("malformed BTF: {0}")]
    Malformed(&'static str),
    #[error("BTF has no struct {0}")]
    NoStruct(String),
    #[error("BTF struct {st} has no member {member}")]
    NoMember { st: String, member: String },
    #[error("BTF member {st}.{member}: {what}")]
    BadMember {
        st: String,
        member: String,
        what: String,
    },
}

/// One type record: where it starts in the type section and its common header.
#[derive(Clone, Copy, Debug)]
struct Ty {
    /// Byte offset of the record's extra data (after the 12-byte header) in `types`.
    extra: usize,
    name_off: u32,
    kind: u32,
    vlen: u32,
    kind_flag: bool,
    /// `size` or `type`, depending on the kind.
    size_type: u32,
}

/// A member found by [`Btf::member`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    /// Byte offset from the start of the outer struct.
    pub offset: u32,
    /// Size of the member's type in bytes (pointers: 8).
    pub size: u32,
}

/// Parsed BTF (little-endian, as the kernel writes it on the machines flowlens runs on).
pub struct Btf {
    types: Vec<u8>,
    strings: Vec<u8>,
    /// Index `i` is type id `i + 1` (id 0 is `void`).
    index: Vec<Ty>,
}

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(off..off + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?))
}

impl Btf {
    /// The running kernel's BTF.
    pub fn from_kernel() -> Result<Btf, BtfError> {
        Self::from_file(Path::new(VMLINUX_BTF))
    }

    pub fn from_file(path: &Path) -> Result<Btf, BtfError> {
        let data = std::fs::read(path).map_err(|source| BtfError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&data)
    }

    pub fn parse(data: &[u8]) -> Result<Btf, BtfError> {
        use BtfError::Malformed;
        if u16_at(data, 0) != Some(BTF_MAGIC) {
            return Err(Malformed("bad magic (not little-endian BTF)"));
        }
        let hdr_len = u32_at(data, 4).ok_or(Malformed("short header"))? as usize;
        let field = |i: usize| -> Result<usize, BtfError> {
            u32_at(data, 8 + 4 * i)
                .map(|v| v as usize)
                .ok_or(Malformed("short header"))
        };
        let (type_off, type_len, str_off, str_len) = (field(0)?, field(1)?, field(2)?, field(3)?);
        let section = |off: usize, len: usize| {
            let start = hdr_len.checked_add(off)?;
            data.get(start..start.checked_add(len)?)
        };
        let types = section(type_off, type_len)
            .ok_or(Malformed("type section out of bounds"))?
            .to_vec();
        let strings = section(str_off, str_len)
            .ok_or(Malformed("string section out of bounds"))?
            .to_vec();
        let mut index = Vec::new();
        let mut pos = 0usize;
        while pos < types.len() {
            let (Some(name_off), Some(info), Some(size_type)) = (
                u32_at(&types, pos),
                u32_at(&types, pos + 4),
                u32_at(&types, pos + 8),
            ) else {
                return Err(Malformed("truncated type record"));
            };
            let kind = (info >> 24) & 0x1f;
            let vlen = info & 0xffff;
            let extra = pos + 12;
            let extra_len = match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * vlen as usize,
                KIND_ENUM | KIND_FUNC_PROTO => 8 * vlen as usize,
                KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT
                | KIND_FUNC | KIND_FLOAT | KIND_TYPE_TAG => 0,
                _ => return Err(Malformed("unknown type kind")),
            };
            index.push(Ty {
                extra,
                name_off,
                kind,
                vlen,
                kind_flag: info >> 31 == 1,
                size_type,
            });
            pos = extra + extra_len;
        }
        if pos != types.len() {
            return Err(Malformed("type section does not end on a record"));
        }
        Ok(Btf {
            types,
            strings,
            index,
        })
    }

    fn name(&self, off: u32) -> Cow<'_, str> {
        let rest = self.strings.get(off as usize..).unwrap_or_default();
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        String::from_utf8_lossy(&rest[..end])
    }

    fn ty(&self, id: u32) -> Option<&Ty> {
        self.index.get((id as usize).checked_sub(1)?)
    }

    /// The complete (non-forward) struct named `name`.
    fn struct_id(&self, name: &str) -> Option<u32> {
        self.index
            .iter()
            .position(|t| t.kind == KIND_STRUCT && self.name(t.name_off) == name)
            .map(|i| i as u32 + 1)
    }

    /// Size in bytes of type `id`, through typedefs and qualifiers.
    fn size_of(&self, mut id: u32) -> Option<u32> {
        for _ in 0..MAX_DEPTH {
            let t = self.ty(id)?;
            match t.kind {
                KIND_INT | KIND_STRUCT | KIND_UNION | KIND_ENUM | KIND_ENUM64 | KIND_FLOAT => {
                    return Some(t.size_type);
                }
                KIND_PTR => return Some(8),
                KIND_ARRAY => {
                    let elem = u32_at(&self.types, t.extra)?;
                    let n = u32_at(&self.types, t.extra + 8)?;
                    return self.size_of(elem)?.checked_mul(n);
                }
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = t.size_type;
                }
                _ => return None,
            }
        }
        None
    }

    /// Strips typedefs and qualifiers.
    fn resolve(&self, mut id: u32) -> Option<&Ty> {
        for _ in 0..MAX_DEPTH {
            let t = self.ty(id)?;
            match t.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = t.size_type;
                }
                _ => return Some(t),
            }
        }
        None
    }

    /// Finds `member` in the struct/union record `t`, descending into anonymous members.
    /// Returns (bit offset from the start of `t`, bitfield size, type id).
    fn find(&self, t: &Ty, member: &str, depth: usize) -> Option<(u32, u32, u32)> {
        if depth > MAX_DEPTH {
            return None;
        }
        for i in 0..t.vlen as usize {
            let at = t.extra + 12 * i;
            let name_off = u32_at(&self.types, at)?;
            let type_id = u32_at(&self.types, at + 4)?;
            let raw = u32_at(&self.types, at + 8)?;
            let (bit_off, bitfield) = if t.kind_flag {
                (raw & 0x00ff_ffff, raw >> 24)
            } else {
                (raw, 0)
            };
            if name_off != 0 {
                if self.name(name_off) == member {
                    return Some((bit_off, bitfield, type_id));
                }
                continue;
            }
            let inner = self.resolve(type_id)?;
            if matches!(inner.kind, KIND_STRUCT | KIND_UNION) {
                let inner = *inner;
                if let Some((off, bf, ty)) = self.find(&inner, member, depth + 1) {
                    return Some((bit_off + off, bf, ty));
                }
            }
        }
        None
    }

    /// Byte offset and size of `st.member` (members of anonymous nested structs/unions
    /// included). Bitfields and members that do not start on a byte are refused.
    pub fn member(&self, st: &str, member: &str) -> Result<Member, BtfError> {
        let id = self
            .struct_id(st)
            .ok_or_else(|| BtfError::NoStruct(st.to_string()))?;
        let t = *self.ty(id).ok_or(BtfError::Malformed("struct id"))?;
        let (bit_off, bitfield, ty) =
            self.find(&t, member, 0).ok_or_else(|| BtfError::NoMember {
                st: st.to_string(),
                member: member.to_string(),
            })?;
        let bad = |what: String| BtfError::BadMember {
            st: st.to_string(),
            member: member.to_string(),
            what,
        };
        if bitfield != 0 || bit_off % 8 != 0 {
            return Err(bad(format!(
                "is a bitfield or not byte-aligned (bit offset {bit_off})"
            )));
        }
        let size = self
            .size_of(ty)
            .ok_or_else(|| bad("has a type of unknown size".into()))?;
        Ok(Member {
            offset: bit_off / 8,
            size,
        })
    }

    /// Like [`Btf::member`], also checking the member's size.
    pub fn member_sized(&self, st: &str, member: &str, size: u32) -> Result<u32, BtfError> {
        let m = self.member(st, member)?;
        if m.size != size {
            return Err(BtfError::BadMember {
                st: st.to_string(),
                member: member.to_string(),
                what: format!("is {} bytes, expected {size}", m.size),
            });
        }
        Ok(m.offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny BTF blob: `struct outer { int a; union { struct { u16 b; u16 c; }; u32 d; }; void *p; }`
    /// built by hand, so the reader is tested against the format, not against itself.
    fn blob() -> Vec<u8> {
        let strings = b"\0int\0outer\0a\0b\0c\0d\0p\0u16\0".to_vec();
        let s = |name: &str| -> u32 {
            let pat = format!("\0{name}\0");
            strings
                .windows(pat.len())
                .position(|w| w == pat.as_bytes())
                .unwrap() as u32
                + 1
        };
        let mut t = Vec::new();
        let mut rec = |name: u32, kind: u32, vlen: u32, kflag: bool, st: u32, extra: &[u32]| {
            t.extend_from_slice(&name.to_le_bytes());
            let info = (kind << 24) | vlen | if kflag { 1 << 31 } else { 0 };
            t.extend_from_slice(&info.to_le_bytes());
            t.extend_from_slice(&st.to_le_bytes());
            for e in extra {
                t.extend_from_slice(&e.to_le_bytes());
            }
        };
        // 1: int (4 bytes), 2: u16 (2 bytes)
        rec(s("int"), KIND_INT, 0, false, 4, &[32]);
        rec(s("u16"), KIND_INT, 0, false, 2, &[16]);
        // 3: anonymous struct { u16 b @0; u16 c @16 bits }
        rec(0, KIND_STRUCT, 2, false, 4, &[s("b"), 2, 0, s("c"), 2, 16]);
        // 4: anonymous union { struct(3) @0; int d @0 }
        rec(0, KIND_UNION, 2, false, 4, &[0, 3, 0, s("d"), 1, 0]);
        // 5: void *
        rec(0, KIND_PTR, 0, false, 0, &[]);
        // 6: typedef-free outer { int a @0; union(4) @32; void *p @64 }
        rec(
            s("outer"),
            KIND_STRUCT,
            3,
            false,
            16,
            &[s("a"), 1, 0, 0, 4, 32, s("p"), 5, 64],
        );
        let mut out = Vec::new();
        out.extend_from_slice(&BTF_MAGIC.to_le_bytes());
        out.extend_from_slice(&[1, 0]); // version, flags
        out.extend_from_slice(&24u32.to_le_bytes()); // hdr_len
        out.extend_from_slice(&0u32.to_le_bytes()); // type_off
        out.extend_from_slice(&(t.len() as u32).to_le_bytes());
        out.extend_from_slice(&(t.len() as u32).to_le_bytes()); // str_off
        out.extend_from_slice(&(strings.len() as u32).to_le_bytes());
        out.extend_from_slice(&t);
        out.extend_from_slice(&strings);
        out
    }

    #[test]
    fn finds_members_through_anonymous_unions() {
        let b = Btf::parse(&blob()).unwrap();
        assert_eq!(
            b.member("outer", "a").unwrap(),
            Member { offset: 0, size: 4 }
        );
        assert_eq!(
            b.member("outer", "b").unwrap(),
            Member { offset: 4, size: 2 }
        );
        assert_eq!(
            b.member("outer", "c").unwrap(),
            Member { offset: 6, size: 2 }
        );
        assert_eq!(
            b.member("outer", "d").unwrap(),
            Member { offset: 4, size: 4 }
        );
        assert_eq!(
            b.member("outer", "p").unwrap(),
            Member { offset: 8, size: 8 }
        );
        assert!(matches!(
            b.member("outer", "zz"),
            Err(BtfError::NoMember { .. })
        ));
        assert!(matches!(b.member("nope", "a"), Err(BtfError::NoStruct(_))));
        let e = b.member_sized("outer", "c", 4).unwrap_err().to_string();
        assert!(e.contains("outer.c") && e.contains("2 bytes"), "{e}");
    }

    #[test]
    fn rejects_garbage() {
        assert!(Btf::parse(b"not btf").is_err());
        let mut b = blob();
        b.truncate(b.len() - 20);
        assert!(Btf::parse(&b).is_err());
    }

    /// The running kernel's BTF has the members the netfilter probe reads, with the sizes it
    /// reads them with.
    #[test]
    fn kernel_btf_has_the_probe_members() {
        let b = Btf::from_kernel().unwrap();
        assert_eq!(b.member_sized("sk_buff", "len", 4).unwrap() % 4, 0);
        b.member_sized("sk_buff", "data", 8).unwrap();
        b.member_sized("net_device", "ifindex", 4).unwrap();
        assert_eq!(b.member_sized("nf_hook_state", "hook", 1).unwrap(), 0);
        assert_eq!(b.member_sized("bpf_nf_ctx", "skb", 8).unwrap(), 8);
    }
}
