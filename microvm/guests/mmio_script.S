/*
 * mmio_script: runs a table of MMIO accesses that the host wrote into guest
 * memory before boot, so a test can drive a device register by register.
 *
 * Table at 2 MiB, 24-byte entries: u32 op, u32 width (1/2/4/8), u64 addr,
 * u64 value. Ops: 0 end, 1 write, 2 read and expect value, 3 read and store
 * the result at 2.5 MiB + 8*step, 4 poll until read == value, 5 write the
 * ready port (the VMM pauses there, e.g. for a snapshot; width, addr and
 * value are ignored) and go on with the next step when resumed.
 * Exit codes: 0 all steps done, 2 mismatch, 3 poll gave up, 4 bad op.
 */
        .include "pvh.inc"
        .set TABLE, 0x200000
        .set RESULTS, 0x280000
        .set POLL_LIMIT, 50000000
        .set READY_PORT, 0x520

main:
        movq $TABLE, %rbx
        xorl %r12d, %r12d
next:
        movl (%rbx), %eax
        testl %eax, %eax
        jz done
        movl 4(%rbx), %ecx
        movq 8(%rbx), %rdi
        movq 16(%rbx), %r14
        cmpl $1, %eax
        je op_write
        cmpl $2, %eax
        je op_expect
        cmpl $3, %eax
        je op_store
        cmpl $4, %eax
        je op_poll
        cmpl $5, %eax
        je op_ready
        leaq bad_op_msg(%rip), %rsi
        call puts
        movl $4, %eax
        ret
op_write:
        call mmio_write
        jmp advance
op_expect:
        call mmio_read
        cmpq %r14, %rax
        jne mismatch
        jmp advance
op_store:
        call mmio_read
        movq %rax, RESULTS(,%r12,8)
        jmp advance
op_poll:
        movl $POLL_LIMIT, %r13d
1:      call mmio_read
        cmpq %r14, %rax
        je advance
        decl %r13d
        jnz 1b
        leaq poll_msg(%rip), %rsi
        call puts
        movl $3, %eax
        ret
op_ready:
        movw $READY_PORT, %dx
        outb %al, %dx
        jmp advance
advance:
        addq $24, %rbx
        incl %r12d
        jmp next
done:
        leaq done_msg(%rip), %rsi
        call puts
        xorl %eax, %eax
        ret
mismatch:
        movq %rax, %r15
        leaq mismatch_msg(%rip), %rsi
        call puts
        movq %r12, %rdi
        call puthex
        leaq got_msg(%rip), %rsi
        call puts
        movq %r15, %rdi
        call puthex
        leaq want_msg(%rip), %rsi
        call puts
        movq %r14, %rdi
        call puthex
        leaq nl(%rip), %rsi
        call puts
        movl $2, %eax
        ret

/* mmio_read: %rax = width-%ecx read of (%rdi). Preserves %rcx, %rdi. */
mmio_read:
        xorl %eax, %eax
        cmpl $1, %ecx
        jne 1f
        movb (%rdi), %al
        ret
1:      cmpl $2, %ecx
        jne 2f
        movw (%rdi), %ax
        ret
2:      cmpl $4, %ecx
        jne 3f
        movl (%rdi), %eax
        ret
3:      movq (%rdi), %rax
        ret

/* mmio_write: width-%ecx write of %r14 to (%rdi). */
mmio_write:
        movq %r14, %rax
        cmpl $1, %ecx
        jne 1f
        movb %al, (%rdi)
        ret
1:      cmpl $2, %ecx
        jne 2f
        movw %ax, (%rdi)
        ret
2:      cmpl $4, %ecx
        jne 3f
        movl %eax, (%rdi)
        ret
3:      movq %rax, (%rdi)
        ret

        .section .rodata
done_msg:     .asciz "mmio script: all steps done\n"
bad_op_msg:   .asciz "mmio script: unknown op\n"
poll_msg:     .asciz "mmio script: poll gave up\n"
mismatch_msg: .asciz "mmio script: step "
got_msg:      .asciz " read "
want_msg:     .asciz " expected "
nl:           .asciz "\n"
