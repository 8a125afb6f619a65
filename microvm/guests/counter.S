/*
 * counter: counts in memory and on serial, for snapshot tests.
 *
 * Parameters at 2 MiB (written by the host before boot): u64 magic
 * "CNTRPARM", u64 ready_at, u64 limit. At count == ready_at the guest
 * writes the ready port (the VMM pauses there for a snapshot), then prints
 * its clone identity and the UART scratch register it set at start, and
 * copies the identity seed to 3 MiB + 8. The count itself lives at 3 MiB.
 * It exits 0 after count == limit. Without parameters (QEMU) it never
 * says ready and counts forever.
 */
        .include "pvh.inc"
        .set PARAMS, 0x200000
        .set COUNTER, 0x300000
        .set SEED_COPY, 0x300008
        .set IDENTITY, 0x5000
        .set READY_PORT, 0x520
        .set UART_SCRATCH, 0x3ff
        .set SCRATCH_MARK, 0xa5

main:
        movw $UART_SCRATCH, %dx
        movb $SCRATCH_MARK, %al
        outb %al, %dx
        movq $PARAMS, %rbx
        movabsq $0x4d52415052544e43, %rax   /* "CNTRPARM" little-endian */
        cmpq (%rbx), %rax
        jne 1f
        movq 8(%rbx), %r12
        movq 16(%rbx), %r13
        jmp 2f
1:      movq $-1, %r12
        xorq %r13, %r13
2:      xorq %r14, %r14
loop:
        movq %r14, COUNTER
        leaq count_msg(%rip), %rsi
        call puts
        movq %r14, %rdi
        call puthex
        leaq nl(%rip), %rsi
        call puts
        cmpq %r12, %r14
        jne 3f
        movw $READY_PORT, %dx
        outb %al, %dx                   /* snapshot point */
        call report_identity
3:      testq %r13, %r13
        jz 4f
        cmpq %r13, %r14
        jae done
4:      incq %r14
        jmp loop
done:
        xorl %eax, %eax
        ret

report_identity:
        leaq gen_msg(%rip), %rsi
        call puts
        movq IDENTITY + 8, %rdi
        call puthex
        leaq cid_msg(%rip), %rsi
        call puts
        movq IDENTITY + 16, %rdi
        call puthex
        leaq seed_msg(%rip), %rsi
        call puts
        movq IDENTITY + 32, %rdi
        movq %rdi, SEED_COPY
        call puthex
        leaq scratch_msg(%rip), %rsi
        call puts
        movw $UART_SCRATCH, %dx
        xorl %eax, %eax
        inb %dx, %al
        movq %rax, %rdi
        call puthex
        leaq nl(%rip), %rsi
        call puts
        ret

        .section .rodata
count_msg:   .asciz "count "
gen_msg:     .asciz "identity generation="
cid_msg:     .asciz " cid="
seed_msg:    .asciz " seed="
scratch_msg: .asciz " uart-scratch="
nl:          .asciz "\n"
