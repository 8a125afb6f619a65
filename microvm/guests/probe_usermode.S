/* probe_usermode: drop to ring 3 with IRETQ and come back with SYSCALL, as
 * every Linux process does for its first system call. */
        .include "pvh.inc"
        .set USER_CS, 0x20 | 3
        .set USER_SS, 0x18 | 3
        .set MAGIC, 0x5a

main:
        movl $0xc0000080, %ecx          /* EFER.SCE */
        rdmsr
        orl $1, %eax
        wrmsr
        movl $0xc0000081, %ecx          /* STAR: syscall CS 0x08, sysret base 0x10 */
        xorl %eax, %eax
        movl $((0x10 << 16) | 0x08), %edx
        wrmsr
        movl $0xc0000082, %ecx          /* LSTAR */
        movabsq $syscall_entry, %rax
        movq %rax, %rdx
        shrq $32, %rdx
        wrmsr
        movl $0xc0000084, %ecx          /* FMASK: clear IF */
        movl $0x200, %eax
        xorl %edx, %edx
        wrmsr
        movabsq $user_stack_top, %rax
        pushq $USER_SS
        pushq %rax
        pushq $0x2
        pushq $USER_CS
        movabsq $user_code, %rax
        pushq %rax
        iretq

user_code:
        movl $MAGIC, %eax
        syscall
1:      jmp 1b

syscall_entry:
        movabsq $stack_top, %rsp
        cmpl $MAGIC, %eax
        jne 1f
        leaq msg(%rip), %rsi
        call puts
        xorl %edi, %edi
        jmp exit
1:      movl $5, %edi
        jmp exit

        .section .rodata
msg:    .asciz "usermode: syscall from ring 3 reached ring 0\n"
        .section .bss
        .balign 16
user_stack:
        .skip 4096
user_stack_top:
