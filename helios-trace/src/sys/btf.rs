//! Offsets of kernel struct members, from the kernel's own type information
//! (`/sys/kernel/btf/vmlinux`): where a task keeps its mm, start time and exec id, and where an
//! mm keeps its mapping sequence (helios_trace_common::KernelOffsets). The programs read them to
//! tell that a thread's stack mapping is the one they found last (helios-trace-ebpf's
//! stacks.rs, `stack_mapping_end`); where a task's descriptor table keeps the file at a
//! number, which a close's exit reads (syscalls.rs, `close_exit`); where a file keeps its
//! inode's mode, which an open's exit reads (syscalls.rs, `installed_mode`); and where a
//! socket's file keeps its address family, which a receive's exit reads (syscalls.rs,
//! `socket_family`).
//!
//! Read by hand: BTF's layout is a header, a string section and a type section of fixed-size
//! records (include/uapi/linux/btf.h, Documentation/bpf/btf.rst). aya-obj parses it but keeps
//! struct members private, and btf-rs is LGPL, which this MIT/Apache project does not link; what
//! is needed here, a struct member's offset, is ~100 lines. What is not found is `None`, never a guess: the
//! programs then look the mapping up at every call, as before.
use helios_trace_common::KernelOffsets;

/// Where the running kernel's BTF is (CONFIG_DEBUG_INFO_BTF).
pub(crate) const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// The offsets in the BTF at `VMLINUX_BTF`, or `NONE` when it cannot be read or lacks one.
pub(crate) fn running_kernel_offsets() -> KernelOffsets {
    std::fs::read(VMLINUX_BTF).ok().and_then(|btf| kernel_offsets(&btf)).unwrap_or(KernelOffsets::NONE)
}

/// The offsets the programs read in a BTF blob, or None when it does not parse. Each group is
/// found or left zero on its own: a stack mapping's key (`task_struct.mm`, `.start_time`,
/// `.self_exec_id` and `mm_struct.mm_lock_seq.sequence`, Linux 6.13+), a descriptor's slot
/// (`task_struct.files`, `files_struct.fdt`, `fdtable.fd`: include/linux/fdtable.h), where
/// the main thread's stack starts (`task_struct.mm`, `mm_struct.start_stack`), a file's
/// mode (`file.f_inode`, `inode.i_mode`: include/linux/fs.h), and a socket's family
/// (`file.private_data`, `socket.sk`, `sock_common.skc_family`).
pub(crate) fn kernel_offsets(btf: &[u8]) -> Option<KernelOffsets> {
    let types = Types::parse(btf)?;
    let mapping = stack_mapping_offsets(&types).unwrap_or(KernelOffsets::NONE);
    let [task_files, files_fdt, fdtable_fd] = fd_slot_offsets(&types).unwrap_or([0; 3]);
    let [task_mm, mm_start_stack] =
        word_members(&types, [("task_struct", "mm"), ("mm_struct", "start_stack")]).unwrap_or([0; 2]);
    let [file_inode, inode_mode] = file_mode_offsets(&types).unwrap_or([0; 2]);
    let [file_private_data, socket_sk, sock_family] = socket_family_offsets(&types).unwrap_or([0; 3]);
    Some(KernelOffsets {
        task_mm,
        mm_start_stack,
        task_files,
        files_fdt,
        fdtable_fd,
        file_inode,
        inode_mode,
        file_private_data,
        socket_sk,
        sock_family,
        ..mapping
    })
}

/// Where a socket's file keeps its address family: `file.private_data` (the `struct socket`),
/// `socket.sk` (pointers), and `skc_family` (a u16) of the `struct sock_common` that opens
/// `struct sock` as `__sk_common` (include/net/sock.h).
fn socket_family_offsets(types: &Types) -> Option<[u32; 3]> {
    let [file_private_data, socket_sk] = word_members(types, [("file", "private_data"), ("socket", "sk")])?;
    let (common_at, common) = types.member(types.struct_named("sock")?, "__sk_common")?;
    let (family_at, family_type) = types.member(types.resolve(common)?, "skc_family")?;
    let sock_family = common_at.checked_add(family_at)?;
    (types.size(family_type)? == 2 && sock_family != 0).then_some([file_private_data, socket_sk, sock_family])
}

/// Where a task's descriptor table keeps the file at a number: `task_struct.files`,
/// `files_struct.fdt`, `fdtable.fd`, all pointers (the programs read 8 bytes of each).
fn fd_slot_offsets(types: &Types) -> Option<[u32; 3]> {
    word_members(types, [("task_struct", "files"), ("files_struct", "fdt"), ("fdtable", "fd")])
}

/// Where a file's inode keeps its mode: `file.f_inode` (a pointer, never at 0) and
/// `inode.i_mode` (`umode_t`, 2 bytes; at 0 on every kernel so far).
fn file_mode_offsets(types: &Types) -> Option<[u32; 2]> {
    let [file_inode] = word_members(types, [("file", "f_inode")])?;
    let (inode_mode, mode_type) = types.member(types.struct_named("inode")?, "i_mode")?;
    (types.size(mode_type)? == 2).then_some([file_inode, inode_mode])
}

/// The offsets of `(struct, member)`s of 8 bytes each (pointers and `unsigned long`s, which the
/// programs read as one load), none at 0; None when one is missing.
fn word_members<const N: usize>(types: &Types, members: [(&str, &str); N]) -> Option<[u32; N]> {
    let mut offsets = [0; N];
    for (slot, (name, member)) in offsets.iter_mut().zip(members) {
        let (at, kind) = types.member(types.struct_named(name)?, member)?;
        (types.size(kind)? == 8 && at != 0).then_some(())?;
        *slot = at;
    }
    Some(offsets)
}

fn stack_mapping_offsets(types: &Types) -> Option<KernelOffsets> {
    let task = types.struct_named("task_struct")?;
    let (task_mm, mm_type) = types.member(task, "mm")?;
    let (task_start_time, start_type) = types.member(task, "start_time")?;
    let (task_self_exec_id, exec_id_type) = types.member(task, "self_exec_id")?;
    // mm is a pointer, start_time and self_exec_id u64s (since 5.7): the programs read 8 bytes
    // of each.
    for id in [mm_type, start_type, exec_id_type] {
        (types.size(id)? == 8).then_some(())?;
    }
    let mm = types.struct_named("mm_struct")?;
    let (seq_at, seq_type) = types.member(mm, "mm_lock_seq")?;
    // seqcount_t: `struct seqcount { unsigned sequence; ... }` (include/linux/seqlock_types.h).
    let (sequence_at, sequence_type) = types.member(types.resolve(seq_type)?, "sequence")?;
    (types.size(sequence_type)? == 4).then_some(())?;
    Some(KernelOffsets {
        task_mm,
        task_start_time,
        task_self_exec_id,
        mm_lock_seq: seq_at.checked_add(sequence_at)?,
        ..KernelOffsets::NONE
    })
}

const MAGIC: u16 = 0xeb9f;
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

/// The bytes that follow a type's 12-byte record, by kind (btf.rst, "Type Encoding"); None for
/// a kind this does not know (a later kernel's), whose length it cannot tell.
fn trailing_bytes(kind: u32, vlen: usize) -> Option<usize> {
    Some(match kind {
        KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
        KIND_ARRAY => 12,
        KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * vlen,
        KIND_ENUM | KIND_FUNC_PROTO => 8 * vlen,
        KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_FUNC
        | KIND_FLOAT | KIND_TYPE_TAG => 0,
        _ => return None,
    })
}

/// One type record: where it starts in the type section, its kind and its fields.
#[derive(Clone, Copy)]
struct Type {
    at: usize,
    name: u32,
    kind: u32,
    vlen: usize,
    kind_flag: bool,
    /// `size` for sized kinds, `type` for references.
    size_or_type: u32,
}

struct Types<'a> {
    section: &'a [u8],
    strings: &'a [u8],
    /// Type id n is `types[n - 1]` (id 0 is void).
    types: Vec<Type>,
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(at..at.checked_add(4)?)?.try_into().ok()?))
}

impl<'a> Types<'a> {
    fn parse(btf: &'a [u8]) -> Option<Types<'a>> {
        // struct btf_header: magic u16, version u8, flags u8, hdr_len, type_off, type_len,
        // str_off, str_len (u32 each). Little-endian only: the machines this runs on.
        if u16::from_le_bytes(btf.get(0..2)?.try_into().ok()?) != MAGIC {
            return None;
        }
        let header_len = u32_at(btf, 4)? as usize;
        if header_len < 24 {
            return None;
        }
        let field = |at: usize| u32_at(btf, at).map(|v| v as usize);
        let (type_off, type_len, str_off, str_len) = (field(8)?, field(12)?, field(16)?, field(20)?);
        let data = btf.get(header_len..)?;
        let section = data.get(type_off..type_off.checked_add(type_len)?)?;
        let strings = data.get(str_off..str_off.checked_add(str_len)?)?;
        let mut types = Vec::new();
        let mut at = 0;
        while at < section.len() {
            let info = u32_at(section, at + 4)?;
            let (kind, vlen) = ((info >> 24) & 0x1f, (info & 0xffff) as usize);
            let record = Type {
                at,
                name: u32_at(section, at)?,
                kind,
                vlen,
                kind_flag: info >> 31 == 1,
                size_or_type: u32_at(section, at + 8)?,
            };
            types.push(record);
            at = at.checked_add(12 + trailing_bytes(kind, vlen)?)?;
        }
        Some(Types { section, strings, types })
    }

    fn get(&self, id: u32) -> Option<Type> {
        self.types.get((id as usize).checked_sub(1)?).copied()
    }

    fn name(&self, offset: u32) -> Option<&'a [u8]> {
        let from = self.strings.get(offset as usize..)?;
        Some(&from[..from.iter().position(|b| *b == 0)?])
    }

    fn struct_named(&self, name: &str) -> Option<Type> {
        self.types
            .iter()
            .copied()
            .find(|t| t.kind == KIND_STRUCT && t.vlen > 0 && self.name(t.name) == Some(name.as_bytes()))
    }

    /// The type `id` is, through typedefs and qualifiers.
    fn resolve(&self, mut id: u32) -> Option<Type> {
        for _ in 0..32 {
            let t = self.get(id)?;
            match t.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = t.size_or_type
                }
                _ => return Some(t),
            }
        }
        None
    }

    /// The byte size of type `id`.
    fn size(&self, id: u32) -> Option<u32> {
        let t = self.resolve(id)?;
        match t.kind {
            KIND_PTR => Some(8),
            KIND_INT | KIND_STRUCT | KIND_UNION | KIND_ENUM | KIND_ENUM64 => Some(t.size_or_type),
            _ => None,
        }
    }

    /// The byte offset and type of member `name` of struct or union `of`, found in it or in an
    /// anonymous struct or union it holds (the kernel nests members in those for alignment:
    /// mm_struct's are all in one). None for a bitfield or a member not on a byte.
    fn member(&self, of: Type, name: &str) -> Option<(u32, u32)> {
        self.member_within(of, name, 0)
    }

    fn member_within(&self, of: Type, name: &str, depth: u32) -> Option<(u32, u32)> {
        if !matches!(of.kind, KIND_STRUCT | KIND_UNION) || depth > 8 {
            return None;
        }
        for i in 0..of.vlen {
            // struct btf_member: name_off, type, offset (bits; with kind_flag, the bitfield's
            // size in the top 8 bits and its offset in the low 24).
            let at = of.at + 12 + 12 * i;
            let (member_name, member_type, offset) =
                (u32_at(self.section, at)?, u32_at(self.section, at + 4)?, u32_at(self.section, at + 8)?);
            let (bits, bitfield) =
                if of.kind_flag { (offset & 0x00ff_ffff, offset >> 24 != 0) } else { (offset, false) };
            if member_name == 0 {
                let inner = self.resolve(member_type)?;
                if let Some((at, t)) = self.member_within(inner, name, depth + 1) {
                    if bits % 8 != 0 {
                        return None;
                    }
                    return Some(((bits / 8).checked_add(at)?, t));
                }
            } else if self.name(member_name) == Some(name.as_bytes()) {
                return (!bitfield && bits % 8 == 0).then_some((bits / 8, member_type));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A BTF blob of the given types (each a 12-byte record and what follows it) and strings.
    fn blob(types: &[Vec<u32>], strings: &[u8]) -> Vec<u8> {
        let type_bytes: Vec<u8> = types.iter().flatten().flat_map(|w| w.to_le_bytes()).collect();
        let mut out = Vec::new();
        out.extend(MAGIC.to_le_bytes());
        out.extend([1u8, 0]);
        for field in [24u32, 0, type_bytes.len() as u32, type_bytes.len() as u32, strings.len() as u32] {
            out.extend(field.to_le_bytes());
        }
        out.extend(type_bytes);
        out.extend(strings);
        out
    }

    fn info(kind: u32, vlen: u32) -> u32 {
        (kind << 24) | vlen
    }

    /// task_struct { int pid; struct { struct mm_struct *mm; }; u64 start_time; u64
    /// self_exec_id; } and
    /// mm_struct { struct { int x; seqcount_t mm_lock_seq; u64 start_stack; }; } with
    /// seqcount_t a typedef of struct seqcount { unsigned sequence; }.
    fn kernel_like() -> Vec<u8> {
        // Strings: offsets 0 "", 1 "int", 5 "task_struct", 17 "pid", 21 "mm", 24 "start_time",
        // 35 "mm_struct", 45 "mm_lock_seq", 57 "seqcount_t", 68 "seqcount", 77 "sequence",
        // 86 "x", 88 "u64", 92 "self_exec_id", 105 "start_stack".
        let strings = b"\0int\0task_struct\0pid\0mm\0start_time\0mm_struct\0mm_lock_seq\0seqcount_t\0seqcount\0sequence\0x\0u64\0self_exec_id\0start_stack\0";
        let types = vec![
            vec![1, info(KIND_INT, 0), 4, 32],          // 1 int
            vec![88, info(KIND_INT, 0), 8, 64],         // 2 u64
            vec![0, info(KIND_PTR, 0), 8],              // 3 struct mm_struct *
            vec![0, info(KIND_STRUCT, 1), 8, 21, 3, 0], // 4 anonymous { mm }
            vec![5, info(KIND_STRUCT, 4), 40, 17, 1, 0, 0, 4, 64, 24, 2, 192, 92, 2, 256], // 5 task_struct
            vec![68, info(KIND_STRUCT, 1), 4, 77, 1, 0], // 6 struct seqcount
            vec![57, info(KIND_TYPEDEF, 0), 6],         // 7 seqcount_t
            vec![0, info(KIND_STRUCT, 3), 320, 86, 1, 0, 45, 7, 1984, 105, 2, 2048], // 8 { x; mm_lock_seq; start_stack }
            vec![35, info(KIND_STRUCT, 1), 320, 0, 8, 0],                            // 9 mm_struct
        ];
        blob(&types, strings)
    }

    #[test]
    fn members_are_found_through_anonymous_structs_and_typedefs() {
        let offsets = kernel_offsets(&kernel_like()).unwrap();
        assert_eq!(
            offsets,
            KernelOffsets {
                task_mm: 8,
                task_start_time: 24,
                task_self_exec_id: 32,
                mm_lock_seq: 248,
                mm_start_stack: 256,
                // The fixture has no descriptor tables: not known, and the rest still found.
                ..KernelOffsets::NONE
            }
        );
    }

    #[test]
    fn what_is_missing_is_zero_and_what_is_malformed_none() {
        let mut wrong_magic = kernel_like();
        wrong_magic[0] = 0;
        assert_eq!(kernel_offsets(&wrong_magic), None);
        let whole = kernel_like();
        for cut in [3, 20, whole.len() - 40] {
            assert_eq!(kernel_offsets(&whole[..cut]), None, "cut at {cut}");
        }
        // A kernel without mm_lock_seq (before 6.13, or without CONFIG_PER_VMA_LOCK): no
        // mapping's key, and the main thread's stack still found.
        let renamed: Vec<u8> = {
            let at = whole.windows(11).position(|w| w == b"mm_lock_seq").unwrap();
            let mut b = whole.clone();
            b[at..at + 11].copy_from_slice(b"mm_lock_xxx");
            b
        };
        let offsets = kernel_offsets(&renamed).unwrap();
        assert!(!offsets.complete(), "{offsets:?}");
        assert_eq!((offsets.task_mm, offsets.mm_start_stack), (8, 256));
        // A kind this parser does not know (a later kernel's): its length is unknown, so nothing
        // after it can be read.
        let unknown = blob(&[vec![0, info(31, 0), 0]], b"\0");
        assert!(Types::parse(&unknown).is_none());
    }

    /// The running kernel's own BTF (CI runs on the same kind of machine: Linux 6.18 with BTF
    /// and per-VMA locks): every offset found, the task's three apart.
    #[test]
    fn the_running_kernel_has_every_offset() {
        let Ok(btf) = std::fs::read(VMLINUX_BTF) else {
            assert!(std::env::var_os("CI").is_none(), "no {VMLINUX_BTF} in CI");
            return;
        };
        let offsets = kernel_offsets(&btf).expect("task_struct.mm, .start_time, mm_struct.mm_lock_seq");
        assert!(offsets.complete(), "{offsets:?}");
        let task = [offsets.task_mm, offsets.task_start_time, offsets.task_self_exec_id];
        assert!(task[0] != task[1] && task[1] != task[2] && task[0] != task[2], "{offsets:?}");
        assert_eq!(running_kernel_offsets(), offsets);
        assert!(offsets.fd_slots(), "task_struct.files, files_struct.fdt, fdtable.fd: {offsets:?}");
        // fdtable opens with `unsigned int max_fds`, then `struct file __rcu **fd`.
        assert_eq!(offsets.fdtable_fd, 8, "{offsets:?}");
        assert!(offsets.file_modes(), "file.f_inode, inode.i_mode: {offsets:?}");
        // struct inode opens with `umode_t i_mode`.
        assert_eq!(offsets.inode_mode, 0, "{offsets:?}");
        assert!(offsets.socket_families(), "file.private_data, socket.sk, sock.skc_family: {offsets:?}");
        // sock_common opens with an address pair (8 bytes) and two hashes (4 each).
        assert_eq!(offsets.sock_family, 16, "{offsets:?}");
        assert!(offsets.mm_start_stack != 0, "mm_struct.start_stack: {offsets:?}");
    }
}
