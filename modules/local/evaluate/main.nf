process EVALUATE {
    tag "${model.subdir ? model.label + ': ' : ''}${ids.size() == 1 ? ids[0] : "${ids[0]}..${ids[-1]} (${ids.size()} images)"}"
    label 'cpu_small'
    conda "${projectDir}/envs/classical.yml"

    input:
    // model: [index, label, subdir, family]; ids[k] scored from truths[k] against the result its record records[k] names
    tuple val(model), val(ids), path(truths, stageAs: 'truth/?/*'), path(records, stageAs: 'records/?/*')
    val code          // digest of the Python files this step runs: a change reruns the task

    output:
    tuple val(model), path('scores/*.json'), emit: scores   // each image's scores (aiod.evaluate.score), pooled by COMPARE

    script:
    def staged_truths = truths instanceof List ? truths : [truths]
    def staged_records = records instanceof List ? records : [records]
    def rows = ids.withIndex().collect { id, k -> [model.label, id, staged_truths[k], staged_records[k]].join('\t') }
    """
    cat > items.tsv <<'AIOD_ITEMS'
${rows.join('\n')}
AIOD_ITEMS
    rm -rf scores
    aiod score --items items.tsv --out scores
    """

    stub:
    """
    mkdir scores
    """
}
