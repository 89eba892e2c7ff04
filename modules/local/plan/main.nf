process PLAN {
    tag "${meta.id}"
    label 'cpu_small'

    input:
    tuple val(meta), path(image)
    path model
    val code          // digest of the Python files this step runs: a change reruns the task

    output:
    tuple val(meta), path('plan.json'), env(CACHE_STATUS), env(N_SUBSTACKS), emit: plan

    script:
    def args = task.ext.args ?: ''
    def axes = meta.axes ? "--axes ${meta.axes}" : ''
    def channel = meta.channel != '' ? "--channel ${meta.channel}" : ''
    """
    aiod plan --id '${meta.id}' --image ${image} ${axes} ${channel} --model ${model} --out plan.json ${args}
    read -r CACHE_STATUS N_SUBSTACKS < plan.status
    """

    stub:
    """
    echo '{"id": "${meta.id}", "stub": true}' > plan.json
    CACHE_STATUS=miss
    N_SUBSTACKS=2
    """
}
